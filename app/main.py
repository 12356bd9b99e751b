"""The FastAPI application: `create_app()` is the factory uvicorn runs (`app.main:create_app`)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.admin.router import router as admin_router
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.middleware import BodySizeLimit, BodyTimeout, HeadAsGet, RequestMetrics
from app.clusters.router import router as clusters_router
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.metrics import Metrics
from app.feedback.router import admin_router as feedback_admin_router
from app.feedback.router import router as feedback_router
from app.health.router import router as health_router
from app.questions.router import router as questions_router
from app.runtime import Runtime
from app.web.router import router as web_router

DESCRIPTION = """
Finds the questions already asked (and answered) that mean the same as a new one.

Each stored question holds K latent codes sampled from a sequence VAE; a new question is sampled
K times too, and a stored question matches when at least `min_pairs` of the K x K pairs of codes
are within the distance `threshold` (any of the 25 pairs by default).
"""


@asynccontextmanager
async def lifespan(app: FastAPI):
    runtime = Runtime(app.state.settings, app.state.metrics)
    await run_in_threadpool(runtime.start)
    app.state.runtime = runtime
    try:
        yield
    finally:
        await run_in_threadpool(runtime.stop)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="qsim", version=__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app, settings.retry_after_seconds)
    install_docs(app)
    app.include_router(web_router)  # first: /questions/map and /questions/explain before /questions/{id}
    app.include_router(questions_router)
    app.include_router(admin_router)
    app.include_router(feedback_router)
    app.include_router(feedback_admin_router)
    app.include_router(clusters_router)
    app.include_router(health_router)
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_seconds)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        # Outside the body checks: a browser desk reads their 413 and 408 like any other answer.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Retry-After"],
        )
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app
