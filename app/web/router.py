"""The desk page and its two endpoints. `GET /` and `/ui/*` serve the committed static files (no
build step, nothing from outside the service); the endpoints translate to DeskService calls."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse

from app.api.errors import error_responses
from app.api.limits import limited
from app.api.routing import Utf8BodyRoute
from app.core.errors import NotFoundError
from app.web.schemas import (
    ExplainedQuestion,
    ExplainQuery,
    ExplainRequest,
    ExplainResponse,
    MapPoint,
    MapResponse,
    Rule,
)
from app.web.service import DeskService, UnknownColorKey
from app.web.service import Rule as RuleValue

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Everything the page loads or calls comes from the service itself; the browser enforces it too.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(route_class=Utf8BodyRoute)
_desk_lock = threading.Lock()


def get_desk(request: Request) -> DeskService:
    state = request.app.state
    desk = getattr(state, "desk", None)
    if desk is None:
        with _desk_lock:
            desk = getattr(state, "desk", None)
            if desk is None:
                runtime, settings = state.runtime, state.settings
                desk = DeskService(
                    runtime.searches, lambda: runtime.applier.state, runtime.applier.wait_until_loaded,
                    settings.map_max_points, settings.load_wait_seconds,
                )
                state.desk = desk
    return desk


DeskDep = Annotated[DeskService, Depends(get_desk)]
ExplainBody = limited(ExplainRequest)  # held to QSIM_MAX_QUESTION_CHARS and QSIM_MAX_LIMIT of the app's settings


def _rule(rule: RuleValue) -> Rule:
    model = rule.model
    return Rule(
        name=model.name, id=model.id, metric=model.metric, samples=model.samples,
        threshold=rule.threshold, min_pairs=rule.min_pairs, pairs=rule.pairs,
    )


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"no page asset named {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=PAGE_HEADERS)


@router.post(
    "/questions/explain", response_model=ExplainResponse, tags=["desk page"],
    summary="Why questions match: the K x K pair distances", responses=error_responses(413, 422, 503),
)
def explain(body: ExplainBody, desk: DeskDep) -> ExplainResponse:
    """The query's K codes and, for the given stored questions (or the `limit` nearest by closest
    pair), every one of the K x K pair distances: a question matches at threshold t when at least
    `min_pairs` of them are <= t. The page applies any t and min_pairs to these without asking again."""
    found = desk.explain(body.question, body.ids, body.limit)
    return ExplainResponse(
        question=body.question,
        model=_rule(found.rule),
        revision=found.revision,
        limit=body.limit,
        query=ExplainQuery(mean=found.query_mean.tolist(), samples=found.query_samples.tolist()),
        results=[
            ExplainedQuestion(
                id=c.id, text=c.text, external_id=c.external_id, answer=c.answer, metadata=c.metadata,
                distance=c.distance, distances=c.distances.tolist(), mean=c.mean.tolist(),
            )
            for c in found.candidates
        ],
        missing=found.missing,
    )


@router.get(
    "/questions/map", response_model=MapResponse, tags=["desk page"],
    summary="2-D map of the stored questions' latent means", responses=error_responses(422, 503),
)
def latent_map(
    desk: DeskDep,
    color_by: Annotated[
        str | None,
        Query(min_length=1, max_length=100, description="metadata key to colour by; default: the most common one"),
    ] = None,
) -> MapResponse:
    """A PCA projection of the posterior means, computed by the service once per index revision, of
    at most QSIM_MAP_MAX_POINTS questions (a fixed sample of larger collections)."""
    try:
        found = desk.latent_map(color_by)
    except UnknownColorKey as error:
        raise RequestValidationError(
            [{"loc": ("query", "color_by"), "msg": str(error), "type": "value_error"}]
        ) from None
    projection = found.projection
    return MapResponse(
        model=_rule(found.rule),
        revision=projection.revision,
        method="pca",
        total=projection.total,
        sampled=len(found.points),
        color_key=found.color_key,
        color_keys=found.color_keys,
        center=projection.center.tolist(),
        components=projection.components.tolist(),
        explained_variance=projection.explained.tolist(),
        points=[MapPoint(id=p.id, x=p.x, y=p.y, text=p.text, label=p.label) for p in found.points],
    )
