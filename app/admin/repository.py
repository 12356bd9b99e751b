"""The service-state rows every worker agrees on, behind one repository: the database's identity,
the active model (a generation every worker follows) and each serving replica's progress.

Nothing else reads or writes the `service_state` table.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin.models import ServiceState
from app.core.db import Database
from app.questions.models import utcnow

DATABASE_ID_KEY = "database_id"
ACTIVE_MODEL_KEY = "active_model"
REPLICA_PREFIX = "replica:"


@dataclass(frozen=True)
class ActiveModel:
    """The model every worker serves: chosen by the last reindex that switched models (generation
    counts those switches), unless QSIM_MODEL_DIR changed since (`configured` is what it was)."""

    path: Path
    generation: int
    configured: str


@dataclass(frozen=True)
class ReplicaProgress:
    """What one serving worker has applied: the change-log revision and the model generation, as of
    `seen_at` (seconds since the epoch)."""

    replica_id: str
    revision: int
    generation: int
    seen_at: float


class ServiceStateRepository:
    def __init__(self, database: Database):
        self.db = database
        self._database_id: str | None = None

    def _get(self, key: str, session: Session | Connection | None = None) -> str | None:
        if session is not None:
            return session.execute(select(ServiceState.value).where(ServiceState.key == key)).scalar_one_or_none()
        with self.db.reading() as own:
            return self._get(key, own)

    def _put(self, key: str, value: str) -> None:
        with self.db.writing() as session:
            row = session.get(ServiceState, key)
            if row is None:
                session.add(ServiceState(key=key, value=value, updated_at=utcnow()))
            else:
                row.value, row.updated_at = value, utcnow()

    # ------------------------------------------------------------------ database identity

    def database_id(self) -> str:
        """A random id stored in the database on first use: a saved index is only reused with the
        database it was built from."""
        if self._database_id is None:
            value = self._get(DATABASE_ID_KEY)
            if value is None:
                try:
                    with self.db.writing() as session:
                        session.add(ServiceState(key=DATABASE_ID_KEY, value=uuid.uuid4().hex, updated_at=utcnow()))
                except IntegrityError:
                    pass  # another process created it first
                value = self._get(DATABASE_ID_KEY)
            self._database_id = value
        return self._database_id

    def stored_database_id(self, session: Session | Connection) -> str | None:
        """The id the database holds now (uncached: the applier compares it with the one its index
        was built for, to notice a database replaced or restored under it)."""
        return self._get(DATABASE_ID_KEY, session)

    def forget_database_id(self) -> None:
        self._database_id = None

    # ------------------------------------------------------------------ active model

    def active_model(self, configured: Path, session: Session | Connection | None = None) -> ActiveModel:
        """The model to serve: the last switch's, unless QSIM_MODEL_DIR (`configured`) changed since
        or that directory is gone; then the configured one, at the recorded generation. Read in
        `session` when given (the applier's poll reads it with the change log's end, in one
        transaction)."""
        value = self._get(ACTIVE_MODEL_KEY, session)
        if value is None:
            return ActiveModel(Path(configured), 0, str(configured))
        record = json.loads(value)
        generation = int(record.get("generation", 0))
        if record.get("configured") == str(configured) and Path(record["path"]).is_dir():
            return ActiveModel(Path(record["path"]), generation, str(configured))
        return ActiveModel(Path(configured), generation, str(configured))

    def activate_model(self, path: Path, configured: Path) -> ActiveModel:
        """Records `path` as the model every worker serves, one generation after the current one."""
        with self.db.writing() as session:
            row = session.get(ServiceState, ACTIVE_MODEL_KEY)
            generation = 1 + (int(json.loads(row.value).get("generation", 0)) if row is not None else 0)
            value = json.dumps({"path": str(path), "configured": str(configured), "generation": generation})
            if row is None:
                session.add(ServiceState(key=ACTIVE_MODEL_KEY, value=value, updated_at=utcnow()))
            else:
                row.value, row.updated_at = value, utcnow()
        return ActiveModel(Path(path), generation, str(configured))

    # ------------------------------------------------------------------ replicas

    def record_replica(self, progress: ReplicaProgress) -> None:
        self._put(
            REPLICA_PREFIX + progress.replica_id,
            json.dumps({"revision": progress.revision, "generation": progress.generation, "seen_at": progress.seen_at}),
        )

    def forget_replica(self, replica_id: str) -> None:
        with self.db.writing() as session:
            session.execute(delete(ServiceState).where(ServiceState.key == REPLICA_PREFIX + replica_id))

    def _replicas(self) -> list[ReplicaProgress]:
        with self.db.reading() as session:
            rows = session.execute(
                select(ServiceState.key, ServiceState.value).where(ServiceState.key.startswith(REPLICA_PREFIX))
            ).all()
        replicas = []
        for key, value in rows:
            record = json.loads(value)
            replicas.append(
                ReplicaProgress(key[len(REPLICA_PREFIX):], int(record["revision"]), int(record["generation"]),
                                float(record["seen_at"]))
            )
        return replicas

    def live_replicas(self, within_seconds: float) -> list[ReplicaProgress]:
        """The replicas that reported in the last `within_seconds` seconds."""
        now = time.time()
        return [replica for replica in self._replicas() if now - replica.seen_at <= within_seconds]

    def forget_stale_replicas(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        stale = [REPLICA_PREFIX + replica.replica_id for replica in self._replicas() if replica.seen_at < cutoff]
        if stale:
            with self.db.writing() as session:
                session.execute(delete(ServiceState).where(ServiceState.key.in_(stale)))
        return len(stale)
