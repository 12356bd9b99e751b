"""Bad input gets a 4xx whose message names what is wrong; never a 500, never a stored row."""

from __future__ import annotations

import json

import pytest

from app.core.config import Settings

MAX_QUESTION_CHARS = Settings().max_question_chars  # the test app's (make_settings keeps the default)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"question": ""}, "question"),
        ({"question": "   \n\t"}, "question is empty or whitespace only"),
        ({"question": "x" * (MAX_QUESTION_CHARS + 1)}, "question"),
        ({"question": 42}, "question"),
        ({"question": ["a"]}, "question"),
        ({}, "question"),
        ({"question": "ok", "limit": 0}, "limit"),
        ({"question": "ok", "limit": 1000}, "limit"),
        ({"question": "ok", "limit": "ten"}, "limit"),
        ({"question": "ok", "threshold": -1}, "threshold"),
        ({"question": "ok", "min_pairs": 0}, "min_pairs"),
        ({"question": "ok", "colour": "blue"}, "colour"),
        ({"question": "nul \x00 inside"}, "NUL"),
        ({"question": "lone \ud800 surrogate"}, "body.question: must be valid Unicode text (it contains a lone surrogate"),
    ],
)
def test_bad_search_requests_are_422_naming_the_field(client, body, named):
    # json.dumps escapes what httpx could not encode (a lone surrogate travels as \ud800).
    response = client.post("/questions/similar", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]


def test_non_finite_threshold_is_rejected(client):
    response = client.post(
        "/questions/similar", content=b'{"question": "ok", "threshold": NaN}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "raw",
    [b'{"question": "\xff\xfe broken"}', b'{"question": ', b"not json at all", b"\x00\x01\x02",
     # a NUL among the first bytes makes json.loads read UTF-8 as UTF-16 or UTF-32
     b"\x00question", b'{"\x00": 1}', b'\x00\x00\x00{"question": "ok"}'],
)
def test_invalid_utf8_or_json_is_422(client, raw):
    response = client.post("/questions/similar", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b'{"question": "x",}', "Expecting property name enclosed in double quotes"),
     (b'{"question": "x"} and more', "Extra data"),
     (b'{"question" "x"}', "Expecting ':' delimiter")],
)
def test_a_json_error_says_what_is_wrong_as_well_as_where(client, raw, reason):
    response = client.post("/questions/similar", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("body.") and f"JSON decode error: {reason}" in detail, detail


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_utf16_or_utf32_body_is_422_asking_for_utf8(client, encoding):
    body = '{"question": "card arrived broken"}'.encode(encoding)  # valid UTF-8 bytes, NULs and all
    response = client.post("/questions/similar", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "must be UTF-8" in response.json()["detail"]


def test_a_raw_nul_inside_a_string_is_a_json_error_at_its_character(client):
    body = '{"question": "éé\x00"}'.encode()
    response = client.post("/questions/similar", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", 16] and "\\u0000" in response.json()["detail"]


def test_oversized_body_is_413_whether_announced_or_streamed(client, settings):
    big = b'{"question": "' + b"a" * settings.max_body_bytes + b'"}'
    assert client.post("/questions/similar", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():
        yield b'{"question": "'
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    response = client.post("/questions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert client.get("/questions").json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"text": "ok", "external_id": ""}, "external_id"),
        ({"text": "ok", "external_id": "x" * 256}, "external_id"),
        ({"text": "ok", "metadata": "not an object"}, "metadata"),
        ({"text": "ok", "metadata": {"k": "nul\x00"}}, "NUL"),
        ({"text": "ok", "metadata": {"k": ["deep", {"x": "lone \ud800"}]}}, "body.metadata"),
        ({"text": "ok", "metadata": {"nul\x00key": 1}}, "NUL"),
        ({"text": "ok", "answer": 5}, "answer"),
        ({"text": "ok", "id": 5}, "id"),
        ({"external_id": "no text"}, "text"),
    ],
)
def test_bad_question_bodies_are_422_and_store_nothing(client, body, named):
    response = client.post("/questions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]
    assert client.get("/questions").json()["total"] == 0


@pytest.mark.parametrize("path", ["/questions/abc", "/questions/0", "/questions/-3", f"/questions/{2**70}"])
def test_bad_ids_in_the_path_are_422(client, path):
    assert client.get(path).status_code == 422


def test_bad_paging_parameters_are_422(client):
    assert client.get("/questions", params={"limit": 0}).status_code == 422
    assert client.get("/questions", params={"after_id": -1}).status_code == 422


def test_batch_limits(client):
    assert client.post("/questions/similar/batch", json={"questions": []}).status_code == 422
    response = client.post("/questions/similar/batch", json={"questions": ["ok", "  "]})
    assert response.status_code == 422 and "questions.1" in response.json()["detail"]


def test_unknown_route_and_method_are_4xx(client):
    assert client.get("/nowhere").status_code == 404
    assert client.put("/questions/1", json={}).status_code == 405


def test_metadata_nested_too_deep_is_422_and_stores_nothing(client):
    deep = "[" * 40 + "]" * 40  # a response could not serialise much deeper (~250): refused on the way in
    body = '{"text": "Where is my card?", "metadata": {"x": ' + deep + "}}"
    response = client.post("/questions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "levels deep" in response.json()["detail"]
    assert client.get("/questions").json()["total"] == 0
    nested = {"x": [[[["fine"]]]]}
    assert client.post("/questions", json={"text": "Where is my card?", "metadata": nested}).status_code == 201
    assert client.get("/questions").json()["items"][0]["metadata"] == nested


@pytest.mark.parametrize("path", ["/questions/similar", "/questions/similar/batch"])
def test_a_huge_integer_in_a_filter_is_a_value_like_any_other(client, path):
    huge = int("1" * 400)  # beyond float range: no finite-number check may convert it
    body = {"questions": ["card"]} if path.endswith("batch") else {"question": "card"}
    assert client.post(path, json={**body, "filter": {"k": huge}}).status_code == 200
    created = client.post("/questions", json={"text": "card", "metadata": {"k": huge}})
    assert created.status_code == 201
    hits = client.post("/questions/similar", json={"question": "card", "filter": {"k": huge}}).json()["results"]
    assert [h["id"] for h in hits] == [created.json()["id"]]


def test_a_number_too_long_to_read_is_422_naming_the_body(client):
    body = '{"question": "card", "limit": ' + "9" * 5000 + "}"
    response = client.post("/questions/similar", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "digits" in response.json()["detail"]
    body = '{"text": "card", "metadata": {"n": ' + "1" * 5000 + "}}"
    response = client.post("/questions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and client.get("/questions").json()["total"] == 0
