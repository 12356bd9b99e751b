"""PostgreSQL going away under the service: writes fail fast with 503, searches keep answering
from the index, and everything recovers by itself once the database is back."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url

from tests.service.proxy import CuttableProxy
from tests.service_fixtures import empty_postgres, make_settings, start_client

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxied(postgres_database_url, tiny_model_dir, tmp_path):
    empty_postgres(postgres_database_url)
    url = make_url(postgres_database_url)
    proxy = CuttableProxy(url.host, url.port or 5432)
    settings = make_settings(
        url.set(port=proxy.port).render_as_string(hide_password=False), tiny_model_dir, tmp_path,
        database_timeout_seconds=1.0,
    )
    client = start_client(settings)
    yield client, proxy
    proxy.restore()
    client.__exit__(None, None, None)
    proxy.close()


def test_outage_gives_fast_503s_and_the_service_recovers_by_itself(proxied):
    client, proxy = proxied
    kept = client.post("/questions", json={"text": "stored before the outage", "external_id": "before"}).json()
    proxy.cut()

    started = time.monotonic()
    response = client.post("/questions", json={"text": "written during the outage"})
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "database unavailable" in response.json()["detail"]
    assert time.monotonic() - started < 5.0
    assert client.get(f"/questions/{kept['id']}").status_code == 503
    # Split readiness: the searches probe stays green (the index answers) and, from the change
    # applier's next poll on (it never asks the database itself), says the outage; the writes
    # probe pings the database and fails.
    deadline = time.monotonic() + 5.0
    while True:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        if ready.json()["database"].startswith("not answering"):
            break
        assert time.monotonic() < deadline, f"the outage never reached /readyz: {ready.json()}"
        time.sleep(0.05)
    writes = client.get("/readyz/writes")
    assert writes.status_code == 503 and "database not answering" in writes.json()["reasons"][0]
    assert client.head("/readyz").status_code == 200 and client.head("/readyz/writes").status_code == 503
    search = client.post("/questions/similar", json={"question": "stored before the outage", "threshold": 1e-9})
    assert search.status_code == 200 and search.json()["results"][0]["id"] == kept["id"]

    proxy.restore()
    deadline = time.monotonic() + 5.0
    while client.post("/questions", json={"text": "written after the outage"}).status_code != 201:
        assert time.monotonic() < deadline, "not recovered within 5 s of the database returning"
        time.sleep(0.1)
    assert client.get("/readyz").status_code == 200 and client.get("/readyz/writes").status_code == 200
    assert client.get(f"/questions/{kept['id']}").json()["text"] == "stored before the outage"
    texts = [q["text"] for q in client.get("/questions").json()["items"]]
    assert "written during the outage" not in texts and "written after the outage" in texts
