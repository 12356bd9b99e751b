"""Reindex jobs: built in a background thread while searches keep being answered from the live
index, then swapped in atomically. Job state lives in the database so any worker can report it,
and a job orphaned by a stopped process is marked failed instead of staying `running` forever."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from app.admin.models import Job
from app.core.db import Database
from app.core.errors import ConflictError
from app.questions.models import utcnow

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
ACTIVE = (QUEUED, RUNNING)
HEARTBEAT_SECONDS = 2.0
STALE_AFTER = timedelta(seconds=30)


class JobConflict(ConflictError, RuntimeError):
    """A job of this kind is already running; the 409 names it (`job_id`)."""

    def __init__(self, job_id: str, kind: str = "reindex"):
        super().__init__(f"{kind} job {job_id} is already running")
        self.job_id = job_id

    def extra(self) -> dict[str, str]:
        return {"job_id": self.job_id}


Work = Callable[[Callable[[float], None]], None]


def _interrupted(job: Job) -> None:
    job.status, job.finished_at = FAILED, utcnow()
    job.error = "interrupted: the service stopped before the job finished"


class JobManager:
    """Background jobs of several kinds (reindex, clusters): one job of each kind at a time."""

    def __init__(self, database: Database, reindex: Callable[[Path | None, Callable[[float], None]], object],
                 on_finish=None):
        self.db = database
        self._reindex = reindex
        self._on_finish = on_finish or (lambda status: None)
        self._lock = threading.Lock()
        self._threads: dict[str, tuple[str, threading.Thread]] = {}  # kind -> (job id, thread)

    def fail_orphans(self) -> int:
        """Jobs left queued/running by a process that stopped (no heartbeat for a while)."""
        cutoff = utcnow() - STALE_AFTER
        with self.db.writing() as session:
            orphans = session.execute(select(Job).where(Job.status.in_(ACTIVE))).scalars().all()
            stale = [job for job in orphans if (job.heartbeat_at or job.created_at) < cutoff and not self._runs(job.id)]
            for job in stale:
                _interrupted(job)
        return len(stale)

    def get(self, job_id: str) -> Job | None:
        """The job; one still marked active whose process stopped beating (killed, or restarted
        before the start-up check could see it stale) is recorded failed as it is read."""
        with self.db.reading() as session:
            job = session.get(Job, job_id)
        if job is not None and job.status in ACTIVE and (job.heartbeat_at or job.created_at) < utcnow() - STALE_AFTER:
            self.fail_orphans()
            with self.db.reading() as session:
                job = session.get(Job, job_id)
        return job

    def fail_unfinished(self) -> int:
        """At shutdown, after the grace: this process's jobs still running are recorded failed (a
        client polling one would otherwise read 'running' until it went stale)."""
        unfinished = [job_id for job_id, thread in self._threads.values() if thread.is_alive()]
        if not unfinished:
            return 0
        with self.db.writing() as session:
            jobs = session.execute(select(Job).where(Job.id.in_(unfinished), Job.status.in_(ACTIVE))).scalars().all()
            for job in jobs:
                _interrupted(job)
        return len(jobs)

    def _runs(self, job_id: str) -> bool:
        return any(owned == job_id and thread.is_alive() for owned, thread in self._threads.values())

    def start_reindex(self, model_dir: Path | None, model_name: str | None) -> Job:
        return self.start("reindex", lambda progress: self._reindex(model_dir, progress), model_name)

    def start(self, kind: str, work: Work, model_name: str | None = None, on_success=None) -> Job:
        """Records a queued job of `kind` and runs `work(progress)` in a background thread;
        `on_success(job_id)` (if given) runs in that thread once `work` has returned."""
        with self._lock:
            running = self._threads.get(kind)
            if running is not None and running[1].is_alive():
                raise JobConflict(running[0], kind)
            with self.db.writing() as session:
                cutoff = utcnow() - STALE_AFTER
                active = session.execute(select(Job).where(Job.status.in_(ACTIVE), Job.kind == kind)).scalars().all()
                live = [j for j in active if (j.heartbeat_at or j.created_at) >= cutoff]
                if live:
                    raise JobConflict(live[0].id, kind)
                job = Job(
                    id=str(uuid.uuid4()), kind=kind, status=QUEUED, progress=0.0, model=model_name,
                    created_at=utcnow(), heartbeat_at=utcnow(),
                )
                session.add(job)
            thread = threading.Thread(
                target=self._run, args=(job.id, kind, work, on_success), name=f"{kind}-{job.id[:8]}", daemon=True
            )
            self._threads[kind] = (job.id, thread)
            thread.start()
            return job

    def wait(self, timeout: float | None = None) -> None:
        for _, thread in list(self._threads.values()):
            thread.join(timeout)

    def _set(self, job_id: str, **values) -> None:
        try:
            with self.db.writing() as session:
                session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow(), **values))
        except SQLAlchemyError as error:  # the job goes on; its record catches up at the next update
            logger.warning("could not record progress of job %s: %s", job_id, error)

    def _beat(self, job_id: str, done: threading.Event) -> None:
        """The job's heartbeat while its thread runs, whether or not its work reports progress
        (a compaction, a save or the wait for other workers can take longer than STALE_AFTER)."""
        while not done.wait(HEARTBEAT_SECONDS):
            self._set(job_id)

    def _run(self, job_id: str, kind: str, work: Work, on_success) -> None:
        done = threading.Event()
        threading.Thread(target=self._beat, args=(job_id, done), name=f"{kind}-beat-{job_id[:8]}", daemon=True).start()
        try:
            self._run_work(job_id, kind, work, on_success)
        finally:
            done.set()

    def _run_work(self, job_id: str, kind: str, work: Work, on_success) -> None:
        self._set(job_id, status=RUNNING, started_at=utcnow())
        last_beat = time.monotonic()

        def progress(fraction: float) -> None:
            nonlocal last_beat
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                self._set(job_id, progress=round(fraction * 0.99, 4))

        try:
            result = work(progress)
            if on_success is not None:
                on_success(job_id, result)
        except Exception as error:  # the live index keeps serving; the job records why
            logger.exception("%s job %s failed", kind, job_id)
            self._set(job_id, status=FAILED, error=f"{type(error).__name__}: {error}", finished_at=utcnow())
            if kind == "reindex":
                self._on_finish(FAILED)
            return
        self._set(job_id, status=SUCCEEDED, progress=1.0, finished_at=utcnow())
        if kind == "reindex":
            self._on_finish(SUCCEEDED)
        logger.info("%s job %s succeeded", kind, job_id)
