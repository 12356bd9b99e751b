"""Fixtures for the service: both databases, settings, and a live app on the tiny model.

PostgreSQL tests use the server named by QSIM_TEST_POSTGRES_URL (default: the local one) in a
throwaway database created for the test session; they are skipped, saying why, when it does not
answer.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.core.migrations import upgrade_to_head

ADMIN_TOKEN = "test-admin-token-0123456789"
POSTGRES_SERVER_URL = os.environ.get(
    "QSIM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TABLES = ("questions", "question_changes", "jobs", "service_state", "feedback", "cluster_results")


def postgres_available() -> str | None:
    """None when the server answers, else why not."""
    try:
        engine = create_engine(POSTGRES_SERVER_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:  # any failure to connect means: skip
        return f"PostgreSQL not reachable at {make_url(POSTGRES_SERVER_URL).render_as_string()}: {error.__class__.__name__}"


@contextmanager
def throwaway_postgres_database(prefix: str, migrate: bool) -> Iterator[str]:
    """A new database on the test server (skipping the test when none answers), dropped after."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            upgrade_to_head(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    with throwaway_postgres_database("qsim_test", migrate=True) as url:
        yield url


def empty_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'qsim.db'}"
        upgrade_to_head(url)
        return url
    url = request.getfixturevalue("postgres_database_url")
    empty_postgres(url)
    return url


def make_settings(database_url: str, model_dir: Path, tmp_path: Path, **overrides) -> Settings:
    values = dict(
        env="test",
        database_url=database_url,
        model_dir=model_dir,
        models_root=model_dir.parent,
        index_dir=tmp_path / "index",
        admin_token=ADMIN_TOKEN,
        seed_on_empty=False,
        index_save_interval_seconds=0,
        log_level="WARNING",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url, tiny_model_dir, tmp_path) -> Settings:
    return make_settings(database_url, tiny_model_dir, tmp_path)


def wait_ready(client: TestClient, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"service not ready: {response.json()}")
        time.sleep(0.05)


def start_client(settings: Settings) -> TestClient:
    from app.main import create_app

    client = TestClient(create_app(settings))
    client.__enter__()
    wait_ready(client)
    return client


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    """The real app (real database, model, index) behind an in-process HTTP client."""
    client = start_client(settings)
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


@pytest.fixture
def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def stored(client, tiny_corpus_rows) -> list[dict]:
    """A hundred tiny-corpus questions stored through the API (external ids q0..q99)."""
    payload = {
        "questions": [
            {"text": row["text"], "external_id": f"q{i}", "metadata": {"category": row["category"]}}
            for i, row in enumerate(tiny_corpus_rows[::3][:100])
        ]
    }
    response = client.post("/questions/bulk", json=payload)
    assert response.status_code == 201, response.text
    return response.json()["items"]


def hold_index_load(monkeypatch) -> threading.Event:
    """Every index load waits until the returned event is set (at most 60 s): a service that is
    still loading its index."""
    from app.similarity.applier import ChangeApplier

    release = threading.Event()
    real_load = ChangeApplier.load_now

    def held_load(self, *args, **kwargs):
        release.wait(60)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ChangeApplier, "load_now", held_load)
    return release
