"""Liveness, readiness and metrics."""

from __future__ import annotations

import os
import time

from fastapi.testclient import TestClient

from app.main import create_app
from tests.service_fixtures import hold_index_load


def test_healthz_and_readyz_when_all_is_well(client, stored, tiny_encoder):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["reasons"] == []
    assert (body["questions"], body["model_id"], body["device"]) == (len(stored), tiny_encoder.model_id, "cpu")


def test_not_ready_while_the_index_loads_but_alive(settings, monkeypatch):
    release = hold_index_load(monkeypatch)
    with TestClient(create_app(settings.model_copy(update={"load_wait_seconds": 0.2}))) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503 and "loading" in loading.json()["reasons"][0]
        search = client.post("/questions/similar", json={"question": "card"})  # waited 0.2 s for the load
        assert search.status_code == 503 and search.headers["retry-after"] and "loading" in search.json()["detail"]
        created = client.post("/questions", json={"text": "stored while loading"})
        assert created.status_code == 201  # writes need only the database; the load replays them
        release.set()
        client.app.state.runtime.wait_until_loaded(30)
        assert client.get("/readyz").status_code == 200
        found = client.post("/questions/similar", json={"question": "stored while loading", "threshold": 1e-9})
        assert found.json()["results"][0]["id"] == created.json()["id"]


def test_metrics_count_requests_per_route_and_describe_the_index(client, stored, tiny_encoder):
    client.post("/questions/similar", json={"question": "card"})
    client.get("/questions/999999")
    text = client.get("/metrics").text
    assert 'qsim_http_requests_total{method="POST",route="/questions/similar",status="200"} 1.0' in text
    assert 'qsim_http_requests_total{method="GET",route="/questions/{question_id}",status="404"} 1.0' in text
    assert 'qsim_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/questions/similar"}' in text
    assert f"qsim_index_questions {float(len(stored))}" in text
    assert f'qsim_model_info{{model_id="{tiny_encoder.model_id}",name="tiny"}} 1.0' in text
    assert "qsim_search_batch_size_count" in text


def test_each_workers_index_gauges_follow_its_heartbeat_not_only_a_scrape(settings):
    """With several workers a scrape is answered by one of them: the others' gauges must be kept
    current by themselves."""
    from app.core.db import open_database
    from app.questions.importer import import_questions
    from app.questions.repository import NewQuestion
    from tests.service_fixtures import start_client

    client = start_client(settings.model_copy(update={"replica_heartbeat_seconds": 0.05}))
    try:
        registry = client.app.state.runtime.metrics.registry
        before = registry.get_sample_value("qsim_index_questions")
        database = open_database(settings.database_url)  # another process's write (qsim import)
        import_questions(database, [NewQuestion(text="written elsewhere about my card")])
        database.dispose()
        deadline = time.monotonic() + 10
        while registry.get_sample_value("qsim_index_questions") != (before or 0) + 1:
            assert time.monotonic() < deadline, registry.get_sample_value("qsim_index_questions")
            time.sleep(0.05)
    finally:
        client.__exit__(None, None, None)


def test_a_dead_workers_gauges_leave_the_shared_metrics(tmp_path, monkeypatch):
    from app.core.metrics import MULTIPROCESS_ENV, Metrics

    dead_pid = 2**22 + 12345  # above any pid this machine hands out
    (tmp_path / f"gauge_liveall_{dead_pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livesum_{dead_pid}.db").write_bytes(b"")
    alive = tmp_path / f"gauge_liveall_{os.getpid()}.db"
    alive.write_bytes(b"")
    (tmp_path / f"counter_{dead_pid}.db").write_bytes(b"")  # counters add up across restarts: kept
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    Metrics()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, f"counter_{dead_pid}.db"])
