"""Admin routes (bearer token): start a reindex, follow its job."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, status

from app.admin.schemas import JobOut, ReindexAccepted, ReindexRequest
from app.api.deps import JobsDep, RuntimeDep, require_admin
from app.api.errors import error_responses
from app.api.routing import Utf8BodyRoute
from app.core.errors import NotFoundError

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    route_class=Utf8BodyRoute,
    responses=error_responses(401, 403, 413, 422, 503),
)


class JobNotFound(NotFoundError):
    def __init__(self, job_id: uuid.UUID):
        super().__init__(f"job {job_id} does not exist")


@router.post(
    "/reindex", response_model=ReindexAccepted, status_code=status.HTTP_202_ACCEPTED, summary="Rebuild the index",
    responses=error_responses(409),
)
def reindex(runtime: RuntimeDep, jobs: JobsDep, body: ReindexRequest | None = None) -> ReindexAccepted:
    """Builds a new index in the background (optionally with another model) while searches are
    answered from the current one, then swaps it in atomically. Poll GET /admin/jobs/{job_id}."""
    name = body.model if body else None
    model_dir = runtime.models.resolve(name) if name else None
    job = jobs.start_reindex(model_dir, name)
    return ReindexAccepted(job_id=job.id, status=job.status)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Status of a background job", responses=error_responses(404))
def get_job(job_id: uuid.UUID, jobs: JobsDep) -> JobOut:
    job = jobs.get(str(job_id))
    if job is None:
        raise JobNotFound(job_id)
    return JobOut.model_validate(job)
