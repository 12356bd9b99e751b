"""FastAPI dependencies: the long-lived service objects, and admin authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.admin.service import JobManager
from app.core.security import check_admin
from app.questions.service import QuestionService
from app.runtime import Runtime


# Plain lookups: async so FastAPI calls them on the event loop instead of a worker thread.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_questions(request: Request) -> QuestionService:
    return request.app.state.runtime.questions


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.runtime.jobs


def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <QSIM_ADMIN_TOKEN>")] = None,
) -> None:
    check_admin(authorization, request.app.state.settings.admin_token)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
QuestionsDep = Annotated[QuestionService, Depends(get_questions)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
