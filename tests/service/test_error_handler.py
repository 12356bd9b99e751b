"""One error hierarchy (app/core/errors.py), one handler (app/api/errors.py): every domain error that
reaches HTTP carries its own status, message, field and extra body fields, and the HTTP layer imports
no domain package to answer it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.admin.service import JobConflict
from app.api.errors import install_error_handlers
from app.clusters.service import ClustersNotReady
from app.core import errors
from app.core.metrics import Metrics
from app.core.security import AdminDisabled, AdminUnauthorized
from app.model.text import EmptyTextError
from app.questions.service import ExternalIdConflict
from app.similarity.catalog import InvalidFilter
from app.web.service import UnknownColorKey

ROOT = Path(__file__).resolve().parents[2]


def test_the_http_error_layer_imports_no_domain_package():
    tree = ast.parse((ROOT / "app" / "api" / "errors.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name == "app" or name.startswith("app.")}
    assert ours == {"app.core.errors"}


class _Job:
    id, status, error = "job-1", "failed", "boom"


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        (ExternalIdConflict(["a"], [7]), errors.ConflictError, 409),
        (JobConflict("job-1"), errors.ConflictError, 409),
        (ClustersNotReady(_Job()), errors.ConflictError, 409),
        (AdminDisabled("off"), errors.Forbidden, 403),
        (AdminUnauthorized("who?"), errors.Unauthorized, 401),
        (EmptyTextError("empty"), errors.InvalidRequest, 422),
        (InvalidFilter("k", None), errors.InvalidRequest, 422),
        (UnknownColorKey("tier", ["category"]), errors.InvalidRequest, 422),
    ],
)
def test_each_domain_error_is_in_the_hierarchy_with_its_status(error, kind, status):
    assert isinstance(error, kind) and error.status_code == status


def test_the_errors_keep_their_python_kinds():
    # Code that catches them as the built-in kinds (pydantic turns a ValueError into a 422) still does.
    assert isinstance(EmptyTextError("empty"), ValueError)
    assert isinstance(InvalidFilter("k", None), ValueError)
    assert isinstance(AdminUnauthorized("who?"), PermissionError)


def test_extra_body_fields_are_the_errors_own():
    assert ExternalIdConflict(["a"], [7]).extra() == {"external_ids": ["a"], "question_ids": [7], "id": 7}
    assert ExternalIdConflict(["a", "b"], [7, 8]).extra() == {"external_ids": ["a", "b"], "question_ids": [7, 8]}
    assert ExternalIdConflict([]).extra() == {"external_ids": []}
    assert JobConflict("job-1").extra() == {"job_id": "job-1"}
    assert ClustersNotReady(_Job()).extra() == {"job_id": "job-1"}
    assert InvalidFilter("k", None).field == "filter"
    assert EmptyTextError("empty").field is None


class _Busy(errors.Unavailable):
    counter = "overloaded"


def _app_raising(error: Exception) -> TestClient:
    app = FastAPI()
    app.state.metrics = Metrics()
    install_error_handlers(app, retry_after_seconds=7)

    @app.get("/boom")
    def boom():
        raise error

    return TestClient(app, raise_server_exceptions=False)


def test_one_handler_answers_every_kind_from_the_error_itself():
    conflict = _app_raising(ExternalIdConflict(["a"], [7])).get("/boom")
    assert conflict.status_code == 409
    assert conflict.json() == {
        "detail": "external_id already used by another question: 'a' (question 7)",
        "external_ids": ["a"], "question_ids": [7], "id": 7,
    }

    empty = _app_raising(EmptyTextError("nothing visible")).get("/boom")
    assert empty.status_code == 422
    assert empty.json() == {"detail": "body: nothing visible",
                            "errors": [{"loc": ["body"], "msg": "nothing visible", "type": "value_error"}]}

    bad_filter = _app_raising(InvalidFilter("k", None)).get("/boom").json()
    assert bad_filter["errors"][0]["loc"] == ["body", "filter"]

    unauthorized = _app_raising(AdminUnauthorized("wrong admin token")).get("/boom")
    assert unauthorized.status_code == 401 and unauthorized.headers["www-authenticate"] == "Bearer"
    assert unauthorized.json() == {"detail": "wrong admin token"}

    assert _app_raising(AdminDisabled("off")).get("/boom").status_code == 403
    assert _app_raising(errors.NotFoundError("no such thing")).get("/boom").json() == {"detail": "no such thing"}


def overloaded(client: TestClient) -> float:
    return client.app.state.metrics.registry.get_sample_value("qsim_overloaded_requests_total")


def test_unavailable_gets_retry_after_and_its_counter():
    client = _app_raising(_Busy("too busy, retry shortly (3 requests already queued)"))
    response = client.get("/boom")
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert response.json() == {"detail": "too busy, retry shortly (3 requests already queued)"}
    assert overloaded(client) == 1

    plain = _app_raising(errors.Unavailable("the search index is still loading"))
    assert plain.get("/boom").headers["retry-after"] == "7"
    assert overloaded(plain) == 0


def test_anything_else_is_still_a_plain_500():
    response = _app_raising(RuntimeError("secret detail")).get("/boom")
    assert response.status_code == 500 and response.json() == {"detail": "internal error"}
