"""The service's long-lived objects, wired together: database, service-state repository, change
applier (the one writer of the index), search service (all encode and search work), question,
feedback and cluster services, and the job manager."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from app.admin.repository import ServiceStateRepository
from app.admin.service import JobManager
from app.clusters.service import ClusterService
from app.core.config import Settings
from app.core.db import Database, open_database
from app.core.metrics import Metrics
from app.core.migrations import check_schema
from app.feedback.service import FeedbackService
from app.questions.service import QuestionService
from app.similarity.applier import ChangeApplier
from app.similarity.model_registry import ModelRegistry
from app.similarity.search_service import SearchService
from app.similarity.state import StateBuilder

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics, database: Database | None = None):
        self.settings = settings
        self.metrics = metrics
        self._model_labels: tuple[str, str] | None = None  # the model /metrics last reported as serving
        self.db = database or open_database(settings.database_url, settings.database_timeout_seconds)
        self.service_state = ServiceStateRepository(self.db)
        self.models = ModelRegistry(settings, self.service_state)
        self.builder = StateBuilder(self.db, settings, self.service_state)
        self._gauges_lock = threading.Lock()
        self.applier = ChangeApplier(
            self.db, settings, self.builder, self.service_state, on_lagging_write=metrics.lagging_writes.inc,
            on_heartbeat=self.update_gauges,
        )
        self.searches = SearchService(
            lambda: self.applier.state,
            self.applier.wait_until_loaded,
            min_coverage=settings.min_coverage,
            max_batch=settings.batch_max_size,
            max_wait_seconds=settings.batch_max_wait_ms / 1000.0,
            max_queue=settings.queue_max,
            timeout_seconds=settings.search_timeout_seconds,
            load_wait_seconds=settings.load_wait_seconds,
            on_batch=metrics.search_batch_size.observe,
            backend_errors=self.builder.backend_errors(),
        )
        self.questions = QuestionService(self.db, self.applier, self.searches)
        self.feedback = FeedbackService(
            self.db, on_record=lambda duplicate: metrics.feedback.labels("duplicate" if duplicate else "not_duplicate").inc()
        )
        self.jobs = JobManager(self.db, self.reindex, on_finish=lambda status: metrics.reindex_jobs.labels(status).inc())
        self.clusters = ClusterService(self.db, lambda: self.applier.state, self.jobs)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Checks the schema and loads the model now (a broken model stops the start with its
        error); the change applier loads or builds the index in the background while /healthz
        already answers."""
        import torch
        from threadpoolctl import threadpool_limits

        # BLAS pools (numpy's GEMM in the index) spin on cores the event loop and the encoder need.
        torch.set_num_threads(self.settings.torch_threads)
        threadpool_limits(self.settings.torch_threads, user_api="blas")
        check_schema(self.db.engine)
        self.builder.check_backend()
        active = self.models.active()
        encoder = self.builder.load_encoder(active.path)
        self.jobs.fail_orphans()
        self.applier.start(encoder, active)

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        return self.applier.wait_until_loaded(timeout)

    def stop(self) -> None:
        """Graceful shutdown: stop taking searches, let a running reindex finish briefly, save."""
        self.searches.stop()
        self.jobs.wait(timeout=self.settings.shutdown_grace_seconds)
        try:
            self.jobs.fail_unfinished()
        except Exception:  # the database may be what is going away
            logger.warning("could not record the unfinished jobs as interrupted; they go stale instead")
        try:
            self.applier.stop()
        except Exception:
            logger.exception("saving the index at shutdown failed; it will be rebuilt or caught up at the next start")
        self.builder.close()
        self.db.dispose()

    def reindex(self, model_dir=None, progress=None):
        """Builds a new index (with another model if given) while the live one serves, then the
        applier switches to it (and every worker follows a model switch). A failure leaves the live
        index untouched."""
        live = self.applier.state
        encoder = self.builder.load_encoder(model_dir) if model_dir else live.encoder
        new_state = self.builder.build(encoder, live.generation, progress)
        return self.applier.switch(new_state, activate=model_dir)

    # ------------------------------------------------------------------ operations

    def readiness(self, writes: bool = False) -> dict:
        """Whether this instance can answer searches (writes=False: the model and index are loaded;
        answered from memory, never from the database) or also writes (writes=True: the database
        answers a ping too). A database outage leaves searches answering from the index, so it
        fails only the writes probe."""
        status = self.applier.status()
        reasons = []
        if not status["loaded"]:
            reasons.append(self.applier.load_error or "loading the model and index")
        database = status.pop("database")
        if writes:
            try:
                self.db.ping()
                database = "ok"
            except SQLAlchemyError as error:
                database = f"not answering ({error.__class__.__name__})"
                reasons.append(f"database {database}")
        return {
            "status": "not ready" if reasons else "ready", "reasons": reasons, "scope": "writes" if writes else "searches",
            "database": database, **status,
        }

    def metrics_exposition(self) -> bytes:
        self.update_gauges()
        self.metrics.search_queue_depth.set(self.searches.depth)
        return self.metrics.exposition()

    def update_gauges(self) -> None:
        """This worker's index gauges; run by its replica heartbeat as well as by a scrape, so that
        with several workers (each scrape answered by one of them) every worker's series is current."""
        with self._gauges_lock:
            self._update_gauges()

    def _update_gauges(self) -> None:
        status = self.applier.status()
        if status["loaded"]:
            self.metrics.index_questions.set(status["questions"])
            self.metrics.index_revision.set(status["revision"])
            self.metrics.index_pending_changes.set(status["pending_changes"])
            serving = (status["model"], status["model_id"])
            if self._model_labels not in (None, serving):
                # 0, not clear(): prometheus_client cannot clear labels in multiprocess mode (QSIM_WORKERS > 1)
                self.metrics.model_info.labels(*self._model_labels).set(0)
            self.metrics.model_info.labels(*serving).set(1)
            self._model_labels = serving
        self.metrics.index_backend.labels(self.settings.index_backend).set(1)  # fixed for the process
        counters = getattr(self.applier.state.index, "counters", None) if status["loaded"] else None
        if counters is not None:
            for name, value in counters.as_dict().items():
                self.metrics.milvus_events.labels(name).set(value)
