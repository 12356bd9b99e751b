"""HTTP routes of agents' feedback: POST /feedback, and GET /admin/feedback (admin token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.api.deps import require_admin
from app.api.errors import error_responses
from app.api.limits import limited
from app.api.routing import Utf8BodyRoute
from app.feedback.schemas import MAX_ID, FeedbackCreate, FeedbackOut, FeedbackPage
from app.feedback.service import FeedbackService

router = APIRouter(tags=["feedback"], route_class=Utf8BodyRoute, responses=error_responses(413, 422, 503))
admin_router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    route_class=Utf8BodyRoute,
    responses=error_responses(401, 403, 422, 503),
)


async def get_feedback(request: Request) -> FeedbackService:
    return request.app.state.runtime.feedback


FeedbackDep = Annotated[FeedbackService, Depends(get_feedback)]
FeedbackBody = limited(FeedbackCreate)  # held to QSIM_MAX_QUESTION_CHARS of the app's settings


@router.post(
    "/feedback", response_model=FeedbackOut, status_code=status.HTTP_201_CREATED, summary="An agent's verdict on a match",
    responses=error_responses(404),
)
def create_feedback(body: FeedbackBody, feedback: FeedbackDep, response: Response) -> FeedbackOut:
    """Records whether the customer's `question` and the stored question `question_id` mean the same.
    The verdicts feed `qsim feedback export` and `qsim calibrate --feedback`."""
    item = feedback.record(body.question, body.question_id, body.duplicate, body.source)
    response.headers["Location"] = f"/admin/feedback?after_id={item.id - 1}&limit=1"
    return FeedbackOut.model_validate(item)


@admin_router.get("/feedback", response_model=FeedbackPage, summary="Agents' verdicts, oldest first")
def list_feedback(
    feedback: FeedbackDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="return verdicts with a larger id")] = 0,
) -> FeedbackPage:
    items, total = feedback.page(after_id, limit + 1)  # one more: whether a next page exists
    more, items = len(items) > limit, items[:limit]
    return FeedbackPage(
        items=[FeedbackOut.model_validate(item) for item in items],
        total=total,
        next_after_id=items[-1].id if more else None,
    )
