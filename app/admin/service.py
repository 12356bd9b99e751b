"""Reindex jobs: built in a background thread while searches keep being answered from the live
index, then swapped in atomically. Job state lives in the database so any worker can report it,
and a job orphaned by a stopped process is marked failed instead of staying `running` forever."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from app.admin.models import Job
from app.core.db import Database
from app.questions.models import utcnow
from app.similarity.engine import SimilarityEngine

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
ACTIVE = (QUEUED, RUNNING)
HEARTBEAT_SECONDS = 2.0
STALE_AFTER = timedelta(seconds=30)


class JobConflict(RuntimeError):
    def __init__(self, job_id: str):
        super().__init__(f"reindex job {job_id} is already running")
        self.job_id = job_id


class JobManager:
    def __init__(self, database: Database, engine: SimilarityEngine, on_finish=None):
        self.db = database
        self.engine = engine
        self._on_finish = on_finish or (lambda status: None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running_id = ""

    def fail_orphans(self) -> int:
        """Jobs left queued/running by a process that stopped (no heartbeat for a while)."""
        cutoff = utcnow() - STALE_AFTER
        with self.db.writing() as session:
            orphans = session.execute(select(Job).where(Job.status.in_(ACTIVE))).scalars().all()
            stale = [job for job in orphans if (job.heartbeat_at or job.created_at) < cutoff]
            for job in stale:
                job.status, job.finished_at = FAILED, utcnow()
                job.error = "interrupted: the service stopped before the job finished"
        return len(stale)

    def get(self, job_id: str) -> Job | None:
        with self.db.reading() as session:
            return session.get(Job, job_id)

    def start_reindex(self, model_dir: Path | None, model_name: str | None) -> Job:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise JobConflict(self._running_id)
            with self.db.writing() as session:
                cutoff = utcnow() - STALE_AFTER
                active = session.execute(select(Job).where(Job.status.in_(ACTIVE))).scalars().all()
                live = [j for j in active if (j.heartbeat_at or j.created_at) >= cutoff]
                if live:
                    raise JobConflict(live[0].id)
                job = Job(
                    id=str(uuid.uuid4()), kind="reindex", status=QUEUED, progress=0.0, model=model_name,
                    created_at=utcnow(), heartbeat_at=utcnow(),
                )
                session.add(job)
            self._running_id = job.id
            self._thread = threading.Thread(
                target=self._run, args=(job.id, model_dir), name=f"reindex-{job.id[:8]}", daemon=True
            )
            self._thread.start()
            return job

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _set(self, job_id: str, **values) -> None:
        try:
            with self.db.writing() as session:
                session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow(), **values))
        except SQLAlchemyError as error:  # the job goes on; its record catches up at the next update
            logger.warning("could not record progress of job %s: %s", job_id, error)

    def _run(self, job_id: str, model_dir: Path | None) -> None:
        self._set(job_id, status=RUNNING, started_at=utcnow())
        last_beat = time.monotonic()

        def progress(fraction: float) -> None:
            nonlocal last_beat
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                self._set(job_id, progress=round(fraction * 0.99, 4))

        try:
            self.engine.reindex(model_dir, progress)
        except Exception as error:  # the live index keeps serving; the job records why
            logger.exception("reindex job %s failed", job_id)
            self._set(job_id, status=FAILED, error=f"{type(error).__name__}: {error}", finished_at=utcnow())
            self._on_finish(FAILED)
            return
        self._set(job_id, status=SUCCEEDED, progress=1.0, finished_at=utcnow())
        self._on_finish(SUCCEEDED)
        logger.info("reindex job %s succeeded", job_id)
