"""The rough edges a hostile or careless client finds, each tried for real: disconnects and stalls
mid-body on a real socket, wrong methods, HEAD, wrong media types, deep JSON, unknown query
parameters, offline docs, and the command line's one-line errors."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import uvicorn

from app.cli import main
from app.core.config import get_settings
from app.core.db import open_database
from app.questions import repository
from tests.reliability.service_process import free_port

# ------------------------------------------------------------------------------ a real server


@pytest.fixture
def server(settings):
    """The app served by uvicorn on a real socket (in a thread of this process)."""
    from app.main import create_app

    app = create_app(settings.model_copy(update={"body_timeout_seconds": 1.0}))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    app.state.runtime.wait_until_loaded(60)
    yield app, port
    instance.should_exit = True
    thread.join(30)


def partial_request(port: int, path: str, announced: int, sent: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {announced}\r\n\r\n"
    ).encode()
    connection.sendall(head + sent)
    return connection


def metric_lines(app, status: str) -> list[str]:
    text = app.state.metrics.exposition().decode()
    return [line for line in text.splitlines() if line.startswith("qsim_http_requests_total") and f'status="{status}"' in line]


def test_a_client_that_disconnects_mid_body_is_neither_an_error_nor_a_500(server, caplog):
    app, port = server
    with caplog.at_level(logging.INFO):
        connection = partial_request(port, "/questions", 500, b'{"text": "half a bo')
        time.sleep(0.2)
        connection.close()
        deadline = time.monotonic() + 10
        while not metric_lines(app, "499"):
            assert time.monotonic() < deadline, "the disconnect was never counted"
            time.sleep(0.05)
    assert not metric_lines(app, "500")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


def test_a_stalled_body_times_out_with_408(server):
    _, port = server
    connection = partial_request(port, "/questions/similar", 200, b'{"question": "wher')
    started = time.monotonic()
    reply = connection.recv(4096).decode()
    waited = time.monotonic() - started
    connection.close()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "request body not received within 1 s" in reply
    assert 0.8 < waited < 5.0


# ------------------------------------------------------------------------------ methods and media


def test_wrong_methods_are_405_with_the_right_allow_header(client):
    cases = {
        ("GET", "/questions/similar"): "POST",
        ("DELETE", "/questions"): "GET, HEAD, POST",
        ("POST", "/questions/5"): "DELETE, GET, HEAD, PATCH",
        ("PUT", "/healthz"): "GET, HEAD",
        ("POST", "/readyz"): "GET, HEAD",
        ("DELETE", "/questions/by-external-id/x"): "GET, HEAD, PUT",
    }
    for (method, path), allow in cases.items():
        response = client.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allow, (method, path)
        assert method in response.json()["detail"]


def test_head_on_health_routes(client):
    for path in ("/healthz", "/readyz", "/readyz/writes"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b"", path
    metrics = client.get("/metrics").text
    assert 'qsim_http_requests_total{method="HEAD",route="/healthz",status="200"} 1.0' in metrics


def test_head_on_a_real_socket_keeps_the_connection_and_logs_no_error(server, caplog):
    # uvicorn reads the request's method from the scope when the response starts: a HEAD seen
    # there as GET made it expect the body, log "Response content shorter than Content-Length"
    # and close the connection a load balancer's probes keep alive.
    _, port = server
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    replies = b""
    with caplog.at_level(logging.INFO):
        for method, path in (("HEAD", "/readyz"), ("HEAD", "/questions/1"), ("GET", "/healthz")):
            connection.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            deadline = time.monotonic() + 10
            while replies.count(b"HTTP/1.1 ") < {"/readyz": 1, "/questions/1": 2, "/healthz": 3}[path]:
                assert time.monotonic() < deadline, replies
                chunk = connection.recv(65536)
                assert chunk, f"the server closed the connection after {replies!r}"
                replies += chunk
    connection.close()
    heads = replies.split(b"HTTP/1.1 ")[1:]
    assert heads[0].startswith(b"200") and heads[1].startswith(b"404") and heads[2].startswith(b"200")
    assert heads[0].endswith(b"\r\n\r\n") and heads[1].endswith(b"\r\n\r\n")  # no body after a HEAD
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_head_answered_by_an_unexpected_error_carries_no_body_either(server, monkeypatch):
    app, port = server

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(app.state.runtime.questions, "get", broken)
    connection = socket.create_connection(("127.0.0.1", port), timeout=2)
    connection.sendall(b"HEAD /questions/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    reply = b""
    try:
        while chunk := connection.recv(65536):  # uvicorn closes a connection after an app error
            reply += chunk
    except TimeoutError:
        pass
    connection.close()
    assert reply.startswith(b"HTTP/1.1 500") and reply.endswith(b"\r\n\r\n"), reply  # headers only


def test_a_body_that_is_not_json_is_415_naming_application_json(client):
    plain = client.post("/questions/similar", content=b'{"question": "x"}', headers={"content-type": "text/plain"})
    form = client.post("/questions", data={"text": "x"})
    for response in (plain, form):
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["detail"]
    assert client.post("/questions/similar", json={"question": "x"}).status_code == 200


def test_deeply_nested_json_gets_a_clear_400(client):
    depth = 20_000
    body = ('{"question": "x", "filter": {"a": ' + "[" * depth + "]" * depth + "}}").encode()
    response = client.post("/questions/similar", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "nests JSON" in response.json()["detail"]
    shallow = client.post("/questions", json={"text": "x", "metadata": {"a": [[[[1]]]]}})
    assert shallow.status_code == 201


def test_unknown_query_parameters_are_422(client, admin):
    response = client.get("/questions", params={"offset": 5})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("query.offset: unknown query parameter (this route takes: after_id, limit)")
    assert client.get("/questions", params={"limit": 5}).status_code == 200
    assert client.get("/admin/feedback", params={"page": 2}, headers=admin).status_code == 422
    assert client.post("/questions/similar", params={"debug": 1}, json={"question": "x"}).status_code == 422


def test_docs_are_served_without_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "/docs/assets/swagger-ui.css" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text.replace("https://fastapi", "")
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/feedback"]


# ------------------------------------------------------------------------------ command line


@pytest.fixture
def fresh_env(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    monkeypatch.setenv("QSIM_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_import_on_a_new_database_migrates_it(fresh_env, tmp_path, capsys):
    corpus = tmp_path / "desk.csv"
    corpus.write_text("id,question\nd1,Where is my card?\nd2,How do I top up?\n")
    assert main(["import", "--file", str(corpus), "--text-column", "question", "--external-id-column", "id",
                 "--no-progress"]) == 0
    assert "2 created" in capsys.readouterr().out
    database = open_database(fresh_env)
    with database.reading() as session:
        assert repository.count(session) == 2
    database.dispose()


def test_cli_errors_are_one_line_with_status_2_and_a_traceback_only_with_debug(fresh_env, tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert main(["import", "--file", str(missing), "--text-column", "q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qsim import: error:") and "Traceback" not in err
    with pytest.raises(Exception, match="missing.csv"):  # noqa: B017 (whatever the reader raises, unwrapped)
        main(["--debug", "import", "--file", str(missing), "--text-column", "q"])


def test_a_production_start_without_a_token_is_one_line(fresh_env, monkeypatch, capsys):
    monkeypatch.setenv("QSIM_ENV", "production")
    monkeypatch.delenv("QSIM_ADMIN_TOKEN", raising=False)
    get_settings.cache_clear()
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "QSIM_ADMIN_TOKEN must be set when QSIM_ENV=production" in err
    assert "Traceback" not in err and "pydantic" not in err


def test_serve_names_a_missing_model_dir_or_an_absent_gpu_in_one_line_before_starting(fresh_env, monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setenv("QSIM_MODEL_DIR", str(tmp_path / "no-such-model"))
    get_settings.cache_clear()
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"QSIM_MODEL_DIR={tmp_path / 'no-such-model'}: model artifact" in err, err
    if not torch.cuda.is_available():
        monkeypatch.delenv("QSIM_MODEL_DIR")
        monkeypatch.setenv("QSIM_DEVICE", "cuda")
        get_settings.cache_clear()
        assert main(["serve"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "QSIM_DEVICE=cuda but torch sees no GPU" in err, err
    get_settings.cache_clear()


def test_a_database_that_does_not_exist_is_said_at_once_not_waited_for(monkeypatch, capsys):
    from sqlalchemy.engine import make_url

    from tests.service_fixtures import POSTGRES_SERVER_URL, postgres_available

    unavailable = postgres_available()
    if unavailable:
        pytest.skip(unavailable)
    missing = make_url(POSTGRES_SERVER_URL).set(database="qsim_no_such_database")
    monkeypatch.setenv("QSIM_DATABASE_URL", missing.render_as_string(hide_password=False))
    monkeypatch.setenv("QSIM_DATABASE_WAIT_SECONDS", "60")
    get_settings.cache_clear()
    try:
        started = time.monotonic()
        assert main(["serve"]) == 2
        assert time.monotonic() - started < 20
        err = capsys.readouterr().err
        assert 'database "qsim_no_such_database" does not exist' in err and err.count("\n") == 1, err
    finally:
        get_settings.cache_clear()


def test_a_mistyped_variable_is_named_with_the_setting_it_was_probably_meant_to_be():
    from app.server import _warn_unknown_variables

    said = _warn_unknown_variables({"QSIM_WORKER": "2", "QSIM_PORT": "8000", "QSIM_LONG_TESTS": "1", "PATH": "/bin"})
    assert said == ["QSIM_WORKER is not a qsim setting and is ignored (did you mean QSIM_WORKERS?)"]


def test_the_model_check_follows_the_model_the_last_reindex_switched_to(database_url, tiny_model_dir, tmp_path):
    """A deployment that switched models and then lost the configured directory still starts: the
    check looks at the model the workers will serve."""
    from app.admin.repository import ServiceStateRepository
    from app.cli import CommandError
    from app.server import _check_model
    from tests.service_fixtures import make_settings

    gone = tmp_path / "configured-then-removed"
    settings = make_settings(database_url, tiny_model_dir, tmp_path).model_copy(update={"model_dir": gone})
    with pytest.raises(CommandError, match=f"QSIM_MODEL_DIR={gone}: model artifact"):
        _check_model(settings)
    database = open_database(database_url)
    try:
        ServiceStateRepository(database).activate_model(tiny_model_dir, gone)
    finally:
        database.dispose()
    _check_model(settings)  # the switched-to model is there: no complaint


def test_the_model_check_never_creates_a_sqlite_database(tmp_path, tiny_model_dir, database_url):
    from app.cli import CommandError
    from app.server import _check_model
    from tests.service_fixtures import make_settings

    missing_db = tmp_path / "not-yet" / "qsim.db"
    settings = make_settings(database_url, tiny_model_dir, tmp_path).model_copy(
        update={"database_url": f"sqlite:///{missing_db}", "model_dir": tmp_path / "nope"}
    )
    with pytest.raises(CommandError, match="QSIM_MODEL_DIR="):
        _check_model(settings)  # QSIM_MODEL_DIR is what will load
    assert not missing_db.parent.exists()
