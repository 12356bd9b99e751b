"""The service's long-lived objects, wired together: database, similarity engine, micro-batcher,
question service, job manager and a maintenance thread (catch up with other writers, save the
index now and then)."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from app.admin.service import JobManager
from app.clusters.service import ClusterService
from app.core.config import Settings
from app.core.db import Database, open_database
from app.core.metrics import Metrics
from app.core.migrations import check_schema
from app.feedback.service import FeedbackService
from app.questions import repository
from app.questions.service import QuestionService
from app.similarity.batcher import MicroBatcher
from app.similarity.engine import SimilarityEngine

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics, database: Database | None = None):
        self.settings = settings
        self.metrics = metrics
        self.db = database or open_database(settings.database_url, settings.database_timeout_seconds)
        self.engine = SimilarityEngine(self.db, settings)
        self.batcher = MicroBatcher(
            lambda queries: self.engine.search(queries),
            max_batch=settings.batch_max_size,
            max_wait_seconds=settings.batch_max_wait_ms / 1000.0,
            max_queue=settings.queue_max,
            name="search-batcher",
            on_batch=metrics.search_batch_size.observe,
        )
        self.questions = QuestionService(
            self.db, self.engine, self.batcher, settings.search_timeout_seconds, settings.load_wait_seconds
        )
        self.feedback = FeedbackService(
            self.db, on_record=lambda duplicate: metrics.feedback.labels("duplicate" if duplicate else "not_duplicate").inc()
        )
        self.jobs = JobManager(self.db, self.engine, on_finish=lambda status: metrics.reindex_jobs.labels(status).inc())
        self.clusters = ClusterService(self.db, self.engine, self.jobs)
        self.load_error: str | None = None
        self._stopping = threading.Event()
        self._loader: threading.Thread | None = None
        self._maintenance: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Checks the schema and loads the model now (a broken model stops the start with its
        error); loads or builds the index in the background while /healthz already answers."""
        import torch
        from threadpoolctl import threadpool_limits

        # BLAS pools (numpy's GEMM in the index) spin on cores the event loop and the encoder need.
        torch.set_num_threads(self.settings.torch_threads)
        threadpool_limits(self.settings.torch_threads, user_api="blas")
        check_schema(self.db.engine)
        encoder = self.engine.load_encoder(self.engine.configured_model_dir())
        self.jobs.fail_orphans()
        self._loader = threading.Thread(target=self._load, args=(encoder,), name="index-loader", daemon=True)
        self._loader.start()
        self._maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)
        self._maintenance.start()

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.engine.loaded

    def _load(self, encoder) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self.engine.start(encoder)
                self.load_error = None
                return
            except SQLAlchemyError as error:  # the database went away during the load: try again
                self.load_error = f"database unavailable while loading the index: {error.__class__.__name__}"
            except Exception as error:
                self.load_error = f"{type(error).__name__}: {error}"
                logger.exception("loading the index failed; retrying")
            logger.warning("%s; retrying in %.1f s", self.load_error, delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, 10.0)

    def _maintain(self) -> None:
        last_save = time.monotonic()
        interval = self.settings.index_save_interval_seconds
        tick = min(1.0, interval) if interval > 0 else 1.0
        while not self._stopping.wait(tick):
            if not self.engine.loaded:
                continue
            try:
                self.engine.refresh()
                if interval > 0 and time.monotonic() - last_save >= interval:
                    last_save = time.monotonic()
                    self.engine.save()
            except Exception:
                logger.exception("index maintenance failed; retrying in a second")

    def stop(self) -> None:
        """Graceful shutdown: stop taking searches, let a running reindex finish briefly, save."""
        self._stopping.set()
        self.batcher.stop()
        self.jobs.wait(timeout=self.settings.shutdown_grace_seconds)
        if self._maintenance is not None:
            self._maintenance.join(timeout=5)
        try:
            self.engine.stop()
        except Exception:
            logger.exception("saving the index at shutdown failed; it will be rebuilt or caught up at the next start")
        self.db.dispose()

    # ------------------------------------------------------------------ operations

    def readiness(self, writes: bool = False) -> dict:
        """Whether this instance can answer searches (writes=False: the model and index are loaded
        and, while the database answers, the index has applied its changes) or also writes
        (writes=True: the database answers too). A database outage leaves searches answering from
        the index, so it fails only the writes probe."""
        reasons = []
        status = self.engine.status()
        if not status["loaded"]:
            reasons.append(self.load_error or "loading the model and index")
        database = "ok"
        try:
            self.db.ping()
            with self.db.reading() as session:
                latest = repository.last_change(session)
        except SQLAlchemyError as error:
            database = f"not answering ({error.__class__.__name__})"
            if writes:
                reasons.append(f"database {database}")
            latest = None
        if status["loaded"] and latest is not None and latest > status["revision"]:
            self.engine.sync(wait=False)
            status = self.engine.status()
            if latest > status["revision"]:
                reasons.append(f"index has not yet applied {latest - status['revision']} database changes")
        return {
            "status": "not ready" if reasons else "ready", "reasons": reasons, "scope": "writes" if writes else "searches",
            "database": database, **status,
        }

    def metrics_exposition(self) -> bytes:
        status = self.engine.status()
        if status["loaded"]:
            self.metrics.index_questions.set(status["questions"])
            self.metrics.index_revision.set(status["revision"])
            self.metrics.model_info.clear()
            self.metrics.model_info.labels(status["model"], status["model_id"]).set(1)
        self.metrics.search_queue_depth.set(self.batcher.depth)
        return self.metrics.exposition()
