"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from app.api.deps import RuntimeDep

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


@router.get("/healthz", summary="The process is alive", response_model=Health)
def healthz() -> dict:
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str = Field(description="ready or not ready")
    reasons: list[str] = Field(description="why not ready; empty when ready")
    scope: str = Field(description="searches (GET /readyz) or writes (GET /readyz/writes)")
    database: str = Field(description="ok, or why the database is not answering")
    loaded: bool
    model: str | None = None
    model_id: str | None = None
    questions: int | None = None
    revision: int | None = None
    device: str | None = None
    index_kind: str | None = None
    index_backend: str = Field(description="faiss or milvus (QSIM_INDEX_BACKEND)")
    model_generation: int | None = Field(None, description="model switches so far; every worker follows the latest")
    pending_changes: int | None = Field(None, description="changes the last poll saw that the index has not applied yet")


NOT_READY = {503: {"description": "not ready, with reasons", "model": Readiness}}


@router.get("/readyz", summary="Ready to answer searches", response_model=Readiness, responses=NOT_READY)
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """For the load balancer in front of searches: ready when the model and index are loaded (the
    index replayed the change log as it loaded; `pending_changes` counts what other processes wrote
    since that it has not applied yet, which does not fail readiness). A database outage does not
    make it fail: searches keep being answered from the index (`database` says the outage)."""
    report = runtime.readiness(writes=False)
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


@router.get("/readyz/writes", summary="Ready to store questions", response_model=Readiness, responses=NOT_READY)
def readyz_writes(runtime: RuntimeDep) -> JSONResponse:
    """For what routes writes (POST/PUT/PATCH/DELETE /questions, POST /feedback, /admin): everything
    /readyz needs, and the database answers."""
    report = runtime.readiness(writes=True)
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics_exposition(), media_type=CONTENT_TYPE_LATEST)
