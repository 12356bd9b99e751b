"""What the service must never do: leak internals in errors, open CORS by default, take file
paths from requests."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from tests.service_fixtures import make_settings, start_client

LEAKS = ("Traceback", 'File "', "SELECT", "INSERT", "sqlalchemy", "psycopg", "sqlite3", "/work/", "site-packages")


def assert_no_leak(response) -> None:
    for marker in LEAKS:
        assert marker not in response.text, f"{marker!r} leaked in {response.status_code}: {response.text[:300]}"


def test_database_errors_say_unavailable_without_sql_or_driver_details(client, monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError("SELECT secret FROM questions WHERE id = 1", {}, Exception("psycopg: server closed"))

    monkeypatch.setattr(client.app.state.runtime.db, "reading", broken)
    response = client.get("/questions/1")
    assert response.status_code == 503
    assert response.json() == {"detail": "database unavailable, retry shortly"}
    assert_no_leak(response)


def test_unexpected_errors_are_a_bare_500_without_a_stack_trace(settings, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        def explode(*args, **kwargs):
            raise RuntimeError("internal detail /work/main/app/secret.py line 3")

        monkeypatch.setattr(app.state.runtime.questions, "get", explode)
        response = client.get("/questions/1")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "secret" not in response.text
    assert_no_leak(response)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("post", "/questions/similar", {"question": 1}), ("post", "/questions", {"text": "\x00"}),
     ("get", "/questions/abc", None), ("post", "/admin/reindex", {"model": "../../etc"})],
)
def test_validation_errors_do_not_leak_internals(client, admin, method, path, body):
    response = getattr(client, method)(path, json=body, headers=admin) if body is not None else client.get(path)
    assert 400 <= response.status_code < 500
    assert_no_leak(response)


def test_cors_is_closed_unless_configured(client):
    preflight = client.options(
        "/questions/similar",
        headers={"Origin": "https://desk.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.post("/questions/similar", json={"question": "card"}, headers={"Origin": "https://desk.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_exactly_the_configured_origins(database_url, tiny_model_dir, tmp_path):
    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path, cors_origins=["https://desk.example"]))
    try:
        allowed = client.options(
            "/questions/similar",
            headers={"Origin": "https://desk.example", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.headers["access-control-allow-origin"] == "https://desk.example"
        other = client.options(
            "/questions/similar", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        client.__exit__(None, None, None)


def test_a_browser_desk_reads_the_services_own_refusals_and_their_headers(database_url, tiny_model_dir, tmp_path):
    # A 413 for a declared body too large was answered before CORS ran: a page on the allowed
    # origin saw a network error instead of the message. Location and Retry-After are readable.
    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path, cors_origins=["https://desk.example"],
                                        max_body_bytes=1000))
    origin = {"Origin": "https://desk.example"}
    try:
        too_big = client.post("/questions/bulk", content=b"{" + b" " * 2000 + b"}",
                              headers={**origin, "content-type": "application/json"})
        assert too_big.status_code == 413
        assert too_big.headers["access-control-allow-origin"] == "https://desk.example"
        created = client.put("/questions/by-external-id/c1", json={"text": "card arrived broken"}, headers=origin)
        assert created.status_code == 201 and created.headers["location"]
        exposed = {h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")}
        assert {"location", "retry-after"} <= exposed
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("name", ["/etc/passwd", "..", "default/../../var", "a" * 101, "~root", ".hidden"])
def test_requests_cannot_point_the_service_at_files(client, admin, name):
    response = client.post("/admin/reindex", headers=admin, json={"model": name})
    assert response.status_code == 422
    assert_no_leak(response)
