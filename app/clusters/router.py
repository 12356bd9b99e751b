"""Admin routes of duplicate clusters: start a cluster job, read its result."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from app.api.deps import require_admin
from app.api.errors import error_responses
from app.api.limits import limited
from app.api.routing import Utf8BodyRoute
from app.clusters.schemas import ClusterAccepted, ClusterRequest, ClusterResultOut
from app.clusters.service import ClusterService

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    route_class=Utf8BodyRoute,
    responses=error_responses(401, 403, 413, 422, 503),
)


async def get_clusters(request: Request) -> ClusterService:
    return request.app.state.runtime.clusters


ClustersDep = Annotated[ClusterService, Depends(get_clusters)]
ClusterBody = limited(ClusterRequest, optional=True)  # held to QSIM_MAX_FILTER_KEYS of the app's settings


@router.post(
    "/clusters", response_model=ClusterAccepted, status_code=status.HTTP_202_ACCEPTED,
    summary="Cluster the stored questions into duplicates", responses=error_responses(409),
)
def start_clusters(clusters: ClustersDep, body: ClusterBody) -> ClusterAccepted:
    """Leader clustering of the similarity graph of the live index: questions in order of most
    matches first; each one not yet clustered leads a cluster of its matches not yet clustered,
    so every member matches its representative. Poll GET /admin/jobs/{job_id}, then read
    GET /admin/clusters/{job_id}."""
    body = body or ClusterRequest()
    job = clusters.start(body.threshold, body.min_pairs, body.filter or None)
    return ClusterAccepted(job_id=job.id, status=job.status)


@router.get(
    "/clusters/{job_id}", response_model=ClusterResultOut, summary="The clusters a job found",
    responses=error_responses(404, 409),
)
def get_clusters_result(job_id: uuid.UUID, clusters: ClustersDep) -> dict:
    """409 while the job has not succeeded (its status says why)."""
    return clusters.result(str(job_id))
