"""SQLAlchemy engines and sessions, for SQLite (embedded default) and PostgreSQL alike.

Reads and writes use separate session factories:
- SQLite in WAL mode lets readers run beside one writer, but a deferred transaction that read
  before writing fails at once (SQLITE_BUSY_SNAPSHOT) when another writer committed meanwhile;
  write transactions therefore start with BEGIN IMMEDIATE and queue for the lock instead.
- PostgreSQL write transactions take one advisory lock, so change-log numbers are assigned in
  commit order (a reader that has seen change n has seen every change before n).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Integer,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

WRITE_LOCK_KEY = 0x7173696D  # "qsim"


class Base(DeclarativeBase):
    pass


# Surrogate keys: SQLite only auto-increments INTEGER PRIMARY KEY columns, and only never reuses a
# deleted row's id with AUTOINCREMENT (the tables that use this pass SQLITE_NEVER_REUSE_IDS).
Identifier = BigInteger().with_variant(Integer(), "sqlite")
SQLITE_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


def json_text(value: Any) -> str:
    """A JSON value as canonical text: equal for equal documents, different for `true` and `1`
    (which Python's == calls equal) or `1` and `1.0`."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)


class JSONDocument(JSON):
    """JSON whose change detection compares documents, not Python values: with plain JSON,
    SQLAlchemy leaves {"flag": 1} -> {"flag": true} out of the UPDATE because 1 == True."""

    def compare_values(self, x: Any, y: Any) -> bool:
        try:
            return json_text(x) == json_text(y)
        except (TypeError, ValueError):  # e.g. an old value never loaded (SQLAlchemy's NO_VALUE): a change
            return False


class UTCDateTime(TypeDecorator):
    """Timestamps stored in UTC and always read back with their time zone (SQLite forgets it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: qsim stores times with their time zone")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: str, begin: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives kill -9 and power loss
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql(begin)

    return engine


def _postgres_engine(url: str, timeout_seconds: float) -> Engine:
    milliseconds = max(int(timeout_seconds * 1000), 5000)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=timeout_seconds,
        connect_args={
            "connect_timeout": max(1, int(round(timeout_seconds))),
            # Statements here are small; one that hangs means a sick database: fail, do not queue.
            "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
        },
    )


@dataclass
class Database:
    """The engines and session factories of one database."""

    url: str
    engine: Engine  # reads (and DDL, migrations checks)
    write_engine: Engine
    read: sessionmaker[Session]
    write: sessionmaker[Session]

    @property
    def sqlite(self) -> bool:
        return is_sqlite(self.url)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self.read() as session, session.begin():
            yield session

    @contextmanager
    def reading_rows(self) -> Iterator[Connection]:
        """A read transaction without the ORM's session, for tiny reads that run all the time (the
        change applier's poll): a fifth of a session's cost."""
        with self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction, committed on success; change-log numbers follow commit order."""
        with self.write() as session, session.begin():
            if not self.sqlite:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
            yield session

    def ping(self) -> None:
        """Raises when the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()


def open_database(url: str, timeout_seconds: float = 2.0) -> Database:
    if is_sqlite(url):
        engine, write_engine = _sqlite_engine(url, "BEGIN"), _sqlite_engine(url, "BEGIN IMMEDIATE")
    else:
        engine = write_engine = _postgres_engine(url, timeout_seconds)
    return Database(
        url,
        engine,
        write_engine,
        sessionmaker(bind=engine, expire_on_commit=False, autoflush=False),
        sessionmaker(bind=write_engine, expire_on_commit=False, autoflush=False),
    )


def missing_sqlite_file(url: str) -> str | None:
    """The path of the SQLite file `url` names when that file does not exist (opening it would
    create an empty one); None for an existing file, memory or another database."""
    path = make_url(url).database if is_sqlite(url) else None
    return path if path and path != ":memory:" and not Path(path).exists() else None


@contextmanager
def migrated_database(url: str, timeout_seconds: float = 2.0) -> Iterator[Database]:
    """The database at `url` for a command-line tool: refused (SchemaOutOfDateError) unless it is
    at the newest migration, and disposed of when the block ends. A SQLite file that does not
    exist is refused too (opening it would create an empty one)."""
    from app.core.migrations import SchemaOutOfDateError, check_schema

    path = missing_sqlite_file(url)
    if path is not None:
        raise SchemaOutOfDateError(
            f"no database at {path} (QSIM_DATABASE_URL): the service creates it on its first start, "
            "`qsim import` on its first import"
        )
    database = open_database(url, timeout_seconds)
    try:
        check_schema(database.engine)
        yield database
    finally:
        database.dispose()
