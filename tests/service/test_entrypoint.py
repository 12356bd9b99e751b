"""docker/entrypoint.sh, the script the container runs, run here as a process: it waits for the
database, migrates it, fills an empty development database, serves, and saves its index when
stopped. Against a fresh SQLite file and a fresh PostgreSQL database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.service_fixtures import ADMIN_TOKEN, throwaway_postgres_database

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request, tmp_path):
    """A database no migration has touched."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with throwaway_postgres_database("qsim_entry", migrate=False) as url:
        yield url


def test_entrypoint_migrates_seeds_serves_and_saves_on_stop(fresh_database_url, tiny_model_dir, tiny_corpus_file, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "QSIM_ENV": "development",
        "QSIM_DATABASE_URL": fresh_database_url,
        "QSIM_MODEL_DIR": str(tiny_model_dir),
        "QSIM_MODELS_ROOT": str(tiny_model_dir.parent),
        "QSIM_INDEX_DIR": str(tmp_path / "index"),
        "QSIM_SEED_CORPUS": str(tiny_corpus_file),
        "QSIM_ADMIN_TOKEN": ADMIN_TOKEN,
        "QSIM_HOST": "127.0.0.1",
        "QSIM_PORT": str(port),
        "QSIM_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([str(ENTRYPOINT)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "entrypoint never became ready"
            time.sleep(0.2)
        assert httpx.get(f"{base}/questions").json()["total"] == 360  # the seed corpus
        answer = httpx.post(f"{base}/questions/similar", json={"question": "Where is my card?", "threshold": 1e6})
        assert answer.status_code == 200 and len(answer.json()["results"]) == 10
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    # uvicorn re-raises the stop signal after its graceful shutdown, so SIGTERM is a clean exit.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert any((tmp_path / "index").rglob("*")), "the index was not saved at shutdown"
