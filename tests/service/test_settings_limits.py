"""The request limits (QSIM_MAX_QUESTION_CHARS, QSIM_MAX_LIMIT, QSIM_MAX_BATCH_QUESTIONS,
QSIM_MAX_BULK_QUESTIONS, QSIM_MAX_FILTER_KEYS) are the settings of the app that answers, not of the
process environment: `create_app(Settings(max_question_chars=20))` refuses 21 characters and takes
20. A refusal is the 422 pydantic gives for the same constraint: the field's location, the same
message, the same error type."""

from __future__ import annotations

import pytest

from app.core.config import Settings, get_settings
from tests.service_fixtures import make_settings, start_client

SMALL = dict(max_question_chars=20, max_limit=3, max_batch_questions=2, max_bulk_questions=2, max_filter_keys=2)
AT = "q" * 20  # exactly max_question_chars
OVER = "q" * 21


@pytest.fixture
def small(database_url, tiny_model_dir, tmp_path):
    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path, **SMALL))
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def refused(response, loc: list, msg: str, kind: str) -> None:
    """A 422 naming exactly one field, worded as pydantic words it."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"] == [{"loc": loc, "msg": msg, "type": kind}]
    assert body["detail"] == f"{'.'.join(str(part) for part in loc)}: {msg}"


def too_long(chars: int) -> str:
    return f"String should have at most {chars} characters"


def too_many(items: int, got: int) -> str:
    return f"List should have at most {items} items after validation, not {got}"


def keys(count: int) -> dict:
    return {f"k{i}": "v" for i in range(count)}


def test_the_limits_are_not_read_from_the_environment_at_import():
    # The small app below gets its limits although the process-wide settings keep the defaults.
    assert get_settings().max_question_chars == Settings().max_question_chars != SMALL["max_question_chars"]


def test_search_limits_come_from_the_apps_settings(small):
    refused(small.post("/questions/similar", json={"question": OVER}), ["body", "question"], too_long(20),
            "string_too_long")
    assert small.post("/questions/similar", json={"question": AT}).status_code == 200

    refused(small.post("/questions/similar", json={"question": "card", "limit": 4}), ["body", "limit"],
            "Input should be less than or equal to 3", "less_than_equal")
    assert small.post("/questions/similar", json={"question": "card", "limit": 3}).status_code == 200

    refused(small.post("/questions/similar", json={"question": "card", "filter": keys(3)}), ["body", "filter"],
            "Value error, a filter may name at most 2 metadata keys, got 3", "value_error")
    assert small.post("/questions/similar", json={"question": "card", "filter": keys(2)}).status_code == 200

    refused(small.post("/questions/similar/batch", json={"questions": ["a", "b", "c"]}), ["body", "questions"],
            too_many(2, 3), "too_long")
    refused(small.post("/questions/similar/batch", json={"questions": ["a", OVER]}), ["body", "questions", 1],
            too_long(20), "string_too_long")
    refused(small.post("/questions/similar/batch", json={"questions": ["a"], "limit": 4}), ["body", "limit"],
            "Input should be less than or equal to 3", "less_than_equal")
    refused(small.post("/questions/similar/batch", json={"questions": ["a"], "filter": keys(3)}),
            ["body", "filter"], "Value error, a filter may name at most 2 metadata keys, got 3", "value_error")
    batch = small.post("/questions/similar/batch", json={"questions": ["a", AT], "limit": 3, "filter": keys(2)})
    assert batch.status_code == 200, batch.text

    refused(small.post("/questions/encode", json={"question": OVER}), ["body", "question"], too_long(20),
            "string_too_long")
    assert small.post("/questions/encode", json={"question": AT}).status_code == 200


def test_a_default_above_the_limit_is_lowered_to_it(small):
    # limit defaults to 10 (25 for explain); with QSIM_MAX_LIMIT=3 a search never answers more than 3.
    for pair in (["card arrival", "card payment"], ["top up", "exchange rate"]):
        assert small.post("/questions/bulk", json={"questions": [{"text": t} for t in pair]}).status_code == 201
    everything = {"question": "card", "threshold": 1e9}
    assert len(small.post("/questions/similar", json=everything).json()["results"]) == 3
    batch = small.post("/questions/similar/batch", json={"questions": ["card"], "threshold": 1e9}).json()
    assert len(batch["results"][0]["results"]) == 3
    assert len(small.post("/questions/explain", json={"question": "card"}).json()["results"]) == 3


def test_write_limits_come_from_the_apps_settings(small):
    refused(small.post("/questions", json={"text": OVER}), ["body", "text"], too_long(20), "string_too_long")
    created = small.post("/questions", json={"text": AT})
    assert created.status_code == 201, created.text
    question_id = created.json()["id"]

    refused(small.post("/questions/bulk", json={"questions": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}),
            ["body", "questions"], too_many(2, 3), "too_long")
    refused(small.post("/questions/bulk", json={"questions": [{"text": OVER}]}), ["body", "questions", 0, "text"],
            too_long(20), "string_too_long")
    bulk = small.post("/questions/bulk", json={"questions": [{"text": "a"}, {"text": AT.replace("q", "b")}]})
    assert bulk.status_code == 201, bulk.text

    refused(small.put("/questions/by-external-id/e1", json={"text": OVER}), ["body", "text"], too_long(20),
            "string_too_long")
    assert small.put("/questions/by-external-id/e1", json={"text": AT}).status_code == 201

    refused(small.patch(f"/questions/{question_id}", json={"text": OVER}), ["body", "text"], too_long(20),
            "string_too_long")
    assert small.patch(f"/questions/{question_id}", json={"text": AT.replace("q", "p")}).status_code == 200
    assert small.patch(f"/questions/{question_id}", json={"answer": "x" * 100}).status_code == 200

    assert small.get("/questions").json()["total"] == 4  # nothing refused was stored


def test_feedback_desk_and_cluster_limits_come_from_the_apps_settings(small, admin):
    question_id = small.post("/questions", json={"text": "where is my card"}).json()["id"]

    refused(small.post("/feedback", json={"question": OVER, "question_id": question_id, "duplicate": True}),
            ["body", "question"], too_long(20), "string_too_long")
    accepted = small.post("/feedback", json={"question": AT, "question_id": question_id, "duplicate": True})
    assert accepted.status_code == 201, accepted.text

    refused(small.post("/questions/explain", json={"question": OVER}), ["body", "question"], too_long(20),
            "string_too_long")
    refused(small.post("/questions/explain", json={"question": "card", "limit": 4}), ["body", "limit"],
            "Input should be less than or equal to 3", "less_than_equal")
    refused(small.post("/questions/explain", json={"question": "card", "ids": [1, 2, 3, 4]}), ["body", "ids"],
            too_many(3, 4), "too_long")
    assert small.post("/questions/explain", json={"question": AT, "limit": 3}).status_code == 200
    assert small.post("/questions/explain", json={"question": "card", "ids": [question_id, 2, 3]}).status_code == 200

    refused(small.post("/admin/clusters", headers=admin, json={"filter": keys(3)}), ["body", "filter"],
            "Value error, a filter may name at most 2 metadata keys, got 3", "value_error")
    started = small.post("/admin/clusters", headers=admin, json={"filter": keys(2)})
    assert started.status_code == 202, started.text


def test_the_default_app_keeps_the_default_limits(client):
    defaults = Settings()
    chars, limit, batch = defaults.max_question_chars, defaults.max_limit, defaults.max_batch_questions
    bulk, filter_keys = defaults.max_bulk_questions, defaults.max_filter_keys
    assert (chars, limit, batch, bulk, filter_keys) == (1000, 100, 256, 1000, 16)

    refused(client.post("/questions/similar", json={"question": "x" * (chars + 1)}), ["body", "question"],
            too_long(chars), "string_too_long")
    assert client.post("/questions/similar", json={"question": "x" * chars}).status_code == 200
    refused(client.post("/questions/similar", json={"question": "card", "limit": limit + 1}), ["body", "limit"],
            f"Input should be less than or equal to {limit}", "less_than_equal")
    assert client.post("/questions/similar", json={"question": "card", "limit": limit}).status_code == 200
    refused(client.post("/questions/similar", json={"question": "card", "filter": keys(filter_keys + 1)}),
            ["body", "filter"], f"Value error, a filter may name at most {filter_keys} metadata keys, got {filter_keys + 1}",
            "value_error")
    assert client.post("/questions/similar", json={"question": "c", "filter": keys(filter_keys)}).status_code == 200
    refused(client.post("/questions/similar/batch", json={"questions": ["a"] * (batch + 1)}), ["body", "questions"],
            too_many(batch, batch + 1), "too_long")
    assert client.post("/questions/similar/batch", json={"questions": ["a"] * batch}).status_code == 200
    refused(client.post("/questions/bulk", json={"questions": [{"text": "a"}] * (bulk + 1)}), ["body", "questions"],
            too_many(bulk, bulk + 1), "too_long")
    assert client.get("/questions").json()["total"] == 0


def test_the_api_documentation_names_the_settings(client):
    components = client.get("/openapi.json").json()["components"]["schemas"]
    similar = components["SimilarRequest"]["properties"]
    assert "QSIM_MAX_QUESTION_CHARS" in similar["question"]["description"]
    assert "default 1000" in similar["question"]["description"]
    assert "QSIM_MAX_LIMIT" in similar["limit"]["description"]
    assert "QSIM_MAX_FILTER_KEYS" in similar["filter"]["description"]
    assert "QSIM_MAX_BATCH_QUESTIONS" in components["SimilarBatchRequest"]["properties"]["questions"]["description"]
    assert "QSIM_MAX_BULK_QUESTIONS" in components["QuestionBulkCreate"]["properties"]["questions"]["description"]
    assert "QSIM_MAX_QUESTION_CHARS" in components["QuestionCreate"]["properties"]["text"]["description"]


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("QSIM_PORT", "abc", "QSIM_PORT: Input should be a valid integer"),
        ("QSIM_PORT", "99999", "QSIM_PORT: Input should be less than or equal to 65535"),
        ("QSIM_MAX_LIMIT", "0", "QSIM_MAX_LIMIT: Input should be greater than or equal to 1"),
        ("QSIM_WORKERS", "0", "QSIM_WORKERS: Input should be greater than or equal to 1"),
        ("QSIM_SEARCH_TIMEOUT_SECONDS", "0", "QSIM_SEARCH_TIMEOUT_SECONDS: Input should be greater than 0"),
        ("QSIM_QUEUE_MAX", "0", "QSIM_QUEUE_MAX: Input should be greater than or equal to 1"),
        ("QSIM_BATCH_MAX_SIZE", "0", "QSIM_BATCH_MAX_SIZE: Input should be greater than or equal to 1"),
        ("QSIM_DATABASE_TIMEOUT_SECONDS", "-1", "QSIM_DATABASE_TIMEOUT_SECONDS: Input should be greater than 0"),
        ("QSIM_CORS_ORIGINS", "http://a.example", "QSIM_CORS_ORIGINS must be JSON"),
        ("QSIM_LOG_LEVEL", "verbose", "QSIM_LOG_LEVEL: unknown log level 'VERBOSE'"),
        ("QSIM_INDEX_SAVE_INTERVAL_SECONDS", "-1", "QSIM_INDEX_SAVE_INTERVAL_SECONDS: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_environment_value_stops_the_start_with_one_line_naming_the_variable(monkeypatch, capsys, variable, value, said):
    from app import prestart
    from app.cli import describe

    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(Exception) as refused:  # what `qsim serve` prints through describe()
            get_settings()
        assert said in describe(refused.value)
        monkeypatch.setattr(prestart, "prestart", lambda settings: pytest.fail(f"{variable}={value} was accepted"))
        assert prestart.main() == 2  # docker/entrypoint.sh runs it first
        error = capsys.readouterr().err
        assert said in error and "Traceback" not in error and error.count("\n") == 1
    finally:
        get_settings.cache_clear()
