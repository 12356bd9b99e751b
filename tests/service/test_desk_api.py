"""What a desk integration needs, over HTTP on both databases: answers and metadata with every
match, exact metadata filters, external-id reads and upserts, conflicts that name the owner, and
writes that change nothing logging nothing."""

from __future__ import annotations

import math

import numpy as np

from app.questions import repository
from app.search.reference import brute_force_search


def last_change(client) -> int:
    with client.app.state.runtime.db.reading() as session:
        return repository.last_change(session)


def store(client, rows):
    response = client.post("/questions/bulk", json={"questions": rows})
    assert response.status_code == 201, response.text
    return response.json()["items"]


# ------------------------------------------------------------------------------ answers, metadata


def test_every_match_carries_its_answer_and_metadata(client):
    items = store(client, [
        {"text": "my card has not arrived", "external_id": "a", "answer": "It takes 5 days.", "metadata": {"tenant": "acme"}},
        {"text": "how do I top up", "answer": None, "metadata": None},
    ])
    single = client.post("/questions/similar", json={"question": "my card has not arrived", "threshold": 1e9}).json()
    by_id = {r["id"]: r for r in single["results"]}
    assert by_id[items[0]["id"]]["answer"] == "It takes 5 days." and by_id[items[0]["id"]]["metadata"] == {"tenant": "acme"}
    assert by_id[items[1]["id"]]["answer"] is None and by_id[items[1]["id"]]["metadata"] is None
    batch = client.post("/questions/similar/batch", json={"questions": ["my card has not arrived"], "threshold": 1e9}).json()
    assert batch["results"][0]["results"] == single["results"]
    # A change of answer or metadata shows in the next answer (the change log carries it).
    client.patch(f"/questions/{items[0]['id']}", json={"answer": "Within a week.", "metadata": {"tenant": "beta"}})
    again = client.post("/questions/similar", json={"question": "my card has not arrived", "threshold": 1e-9}).json()
    assert again["results"][0]["answer"] == "Within a week." and again["results"][0]["metadata"] == {"tenant": "beta"}


# ------------------------------------------------------------------------------ filters


def test_filters_equal_the_brute_force_rule_over_the_questions_that_pass(client, tiny_corpus_rows, tiny_encoder):
    rows = tiny_corpus_rows[:120]
    payload = [
        {"text": row["text"], "metadata": {"tenant": ["acme", "beta", "gamma"][i % 3], "category": row["category"],
                                           "priority": i % 4, "vip": i % 5 == 0}}
        for i, row in enumerate(rows)
    ]
    items = store(client, payload)
    ids = np.array([q["id"] for q in items])
    codes = tiny_encoder.sample([q["text"] for q in items])
    metas = [q["metadata"] for q in items]
    filters = [
        {"tenant": "acme"},
        {"tenant": "beta", "category": rows[1]["category"]},
        {"priority": 2},
        {"priority": 2.0},  # numbers equal as numbers
        {"vip": True},
        {"vip": True, "tenant": "gamma", "priority": 0},
        {"tenant": "nobody"},
        {"missing_key": "x"},
    ]
    for where in filters:
        keep = np.array([all(m.get(k) == v and type(m.get(k)) is not bool or m.get(k) is v for k, v in where.items())
                         for m in metas])
        for query, threshold, min_pairs in [("I still have not received my card", 3.5, 1), ("top up", math.inf, 1),
                                            ("exchange rate", 4.0, 3)]:
            expected = brute_force_search(
                tiny_encoder.sample([query])[0], ids[keep], codes[keep], threshold=threshold, min_pairs=min_pairs, limit=20
            )
            request = {"question": query, "limit": 20, "min_pairs": min_pairs, "filter": where}
            if not math.isinf(threshold):
                request["threshold"] = threshold
            else:
                request["threshold"] = 1e12
                expected = brute_force_search(
                    tiny_encoder.sample([query])[0], ids[keep], codes[keep], threshold=1e12, min_pairs=1, limit=20
                )
            got = client.post("/questions/similar", json=request).json()["results"]
            assert [(r["id"], r["pairs_within"]) for r in got] == [(m.id, m.pairs_within) for m in expected], where
            assert all(all(r["metadata"][k] == v for k, v in where.items()) for r in got)
    batch = client.post("/questions/similar/batch", json={"questions": ["top up", "card"], "filter": {"tenant": "acme"},
                                                         "threshold": 1e12}).json()
    assert all(r["metadata"]["tenant"] == "acme" for item in batch["results"] for r in item["results"])
    assert len(batch["results"][0]["results"]) == 10


def test_booleans_are_not_numbers_in_a_filter(client):
    items = store(client, [{"text": "flag one", "metadata": {"flag": 1}}, {"text": "flag true", "metadata": {"flag": True}}])
    def ids(where):
        body = client.post("/questions/similar", json={"question": "flag", "threshold": 1e12, "filter": where}).json()
        return [r["id"] for r in body["results"]]
    assert ids({"flag": True}) == [items[1]["id"]]
    assert ids({"flag": 1}) == [items[0]["id"]]


def test_searches_batched_together_keep_their_own_filter_when_true_and_1_differ(client):
    """Python calls True == 1 (and hashes them alike): two filters that differ only so must not be
    answered as one group when the micro-batcher puts them in one batch."""
    from app.similarity.search_service import SearchQuery, search

    items = store(client, [{"text": "flag one", "metadata": {"flag": 1}}, {"text": "flag true", "metadata": {"flag": True}}])
    state = client.app.state.runtime.applier.state
    queries = [SearchQuery("flag", 10, 1e12, 1, SearchQuery.where(where)) for where in ({"flag": True}, {"flag": 1})]
    by_true, by_one = search(state, queries, min_coverage=0.0)
    assert [hit.id for hit in by_true.hits] == [items[1]["id"]]
    assert [hit.id for hit in by_one.hits] == [items[0]["id"]]


def test_a_filter_that_keeps_three_of_many_still_returns_them(client, tiny_corpus_rows):
    rows = [{"text": row["text"], "metadata": {"tenant": "big"}} for row in tiny_corpus_rows[:300]]
    rows[17]["metadata"] = rows[150]["metadata"] = rows[299]["metadata"] = {"tenant": "tiny"}
    items = store(client, rows)
    body = client.post("/questions/similar", json={"question": "card", "threshold": 1e12, "filter": {"tenant": "tiny"}}).json()
    assert sorted(r["id"] for r in body["results"]) == sorted(items[i]["id"] for i in (17, 150, 299))


def test_a_bad_filter_is_a_422_naming_the_key(client):
    cases = [
        ({"tenant": ["a", "b"]}, "'tenant'", "an array"),
        ({"tenant": {"nested": 1}}, "'tenant'", "an object"),
        ({"tenant": None}, "'tenant'", "null"),
        ("acme", "filter", "valid dictionary"),
    ]
    for where, named, what in cases:
        for route, body in [("/questions/similar", {"question": "card"}), ("/questions/similar/batch", {"questions": ["card"]})]:
            response = client.post(route, json={**body, "filter": where})
            assert response.status_code == 422, response.text
            detail = response.json()["detail"]
            assert detail.startswith("body.filter") and named in detail and what in detail, detail
    too_many = {f"k{i}": i for i in range(17)}
    response = client.post("/questions/similar", json={"question": "card", "filter": too_many})
    assert response.status_code == 422 and "at most 16" in response.json()["detail"]


# ------------------------------------------------------------------------------ external ids


def test_get_by_external_id(client):
    created = client.post("/questions", json={"text": "refund for a card payment", "external_id": "desk/4711"}).json()
    found = client.get("/questions/by-external-id/desk/4711")
    assert found.status_code == 200 and found.json() == created
    missing = client.get("/questions/by-external-id/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_put_by_external_id_creates_then_updates_and_replays_change_nothing(client):
    body = {"text": "Can I get a refund?", "answer": "Yes, within 30 days.", "metadata": {"tenant": "acme"}}
    created = client.put("/questions/by-external-id/desk-1", json=body)
    assert created.status_code == 201, created.text
    question = created.json()
    assert (question["external_id"], question["answer"], question["metadata"]) == ("desk-1", body["answer"], body["metadata"])
    logged = last_change(client)
    replay = client.put("/questions/by-external-id/desk-1", json=body)
    assert replay.status_code == 200 and replay.json() == question  # same id, same updated_at
    assert last_change(client) == logged  # no change logged
    assert client.get("/questions").json()["total"] == 1
    changed = client.put("/questions/by-external-id/desk-1", json={**body, "answer": "Yes, within 60 days."})
    assert changed.status_code == 200 and changed.json()["id"] == question["id"]
    assert changed.json()["answer"] == "Yes, within 60 days." and changed.json()["updated_at"] > question["updated_at"]
    assert last_change(client) == logged + 1
    # The whole question: fields left out become null; a new text is searchable at once.
    renamed = client.put("/questions/by-external-id/desk-1", json={"text": "refund please"}).json()
    assert (renamed["answer"], renamed["metadata"]) == (None, None)
    found = client.post("/questions/similar", json={"question": "refund please", "threshold": 1e-9}).json()["results"]
    assert found[0]["id"] == question["id"] and found[0]["external_id"] == "desk-1"


def test_an_external_id_path_that_is_not_utf8_is_a_422_not_another_desks_question(client):
    # The server decodes the path with replacement characters: %FF and %FE both read as U+FFFD, so
    # the second upsert overwrote the first desk record.
    first = client.put("/questions/by-external-id/%FF", json={"text": "card arrived broken"})
    assert first.status_code == 422 and "not valid UTF-8" in first.json()["detail"], first.text
    assert client.put("/questions/by-external-id/%ED%A0%80", json={"text": "x"}).status_code == 422  # a surrogate
    assert client.get("/questions/by-external-id/%FEabc").status_code == 422
    assert client.get("/questions").json()["total"] == 0
    # A real U+FFFD in the id, sent as its UTF-8 bytes, is an id like any other.
    stored = client.put("/questions/by-external-id/%EF%BF%BD", json={"text": "card never arrived"})
    assert stored.status_code == 201 and stored.json()["external_id"] == "\ufffd"


def test_an_external_id_with_line_breaks_is_addressed_whole_by_its_path(client):
    """Any external id a body may store can be read and upserted by path, line breaks included:
    the path matches across them, and one ending in a newline is not taken for the id without it."""
    created = client.post("/questions", json={"text": "card arrived broken", "external_id": "ticket\n42"}).json()
    other = client.post("/questions", json={"text": "card never arrived", "external_id": "ticket"}).json()
    assert client.get("/questions/by-external-id/ticket%0A42").json() == created
    assert client.get("/questions/by-external-id/ticket").json() == other
    missing = client.get("/questions/by-external-id/ticket%0A")
    assert missing.status_code == 404 and "ticket" in missing.json()["detail"]
    put = client.put("/questions/by-external-id/a%0Ab%0Dc%E2%80%A8d%0D%0A", json={"text": "refund on a line break"})
    assert put.status_code == 201, put.text
    assert put.json()["external_id"] == "a\nb\rc\u2028d\r\n"
    assert client.put("/questions/by-external-id/ticket%0A42", json={"text": "card arrived broken"}).json()["id"] == created["id"]


def test_a_path_ending_in_a_line_break_does_not_name_the_question_without_it(client):
    question = client.post("/questions", json={"text": "card arrived broken"}).json()
    for method in ("GET", "PATCH", "DELETE"):
        response = client.request(method, f"/questions/{question['id']}%0A", json={"answer": "changed"})
        assert response.status_code == 422 and "positive integer id" in response.json()["detail"], method
    assert client.get(f"/questions/{question['id']}").json() == question


def test_put_rejects_an_external_id_in_the_body_and_bad_fields(client):
    assert client.put("/questions/by-external-id/x", json={"text": "a", "external_id": "y"}).status_code == 422
    assert client.put("/questions/by-external-id/x", json={"answer": "no text"}).status_code == 422
    long_id = "x" * 256
    assert client.put(f"/questions/by-external-id/{long_id}", json={"text": "a"}).status_code == 422


def test_create_with_a_taken_external_id_is_409_naming_the_existing_question(client):
    first = client.post("/questions", json={"text": "first", "external_id": "dup"}).json()
    response = client.post("/questions", json={"text": "second", "external_id": "dup"})
    assert response.status_code == 409
    body = response.json()
    assert body["id"] == first["id"] and body["external_ids"] == ["dup"] and body["question_ids"] == [first["id"]]
    other = client.post("/questions", json={"text": "other", "external_id": "other"}).json()
    clash = client.patch(f"/questions/{other['id']}", json={"external_id": "dup"})
    assert clash.status_code == 409 and clash.json()["id"] == first["id"]


# ------------------------------------------------------------------------------ no-op writes


def test_an_empty_patch_changes_nothing_and_logs_nothing(client):
    created = client.post("/questions", json={"text": "unchanged", "answer": "a"}).json()
    logged = last_change(client)
    empty = client.patch(f"/questions/{created['id']}", json={})
    assert empty.status_code == 200 and empty.json() == created
    same = client.patch(f"/questions/{created['id']}", json={"answer": "a", "text": "unchanged"})
    assert same.status_code == 200 and same.json() == created
    assert last_change(client) == logged
    assert client.patch("/questions/999999", json={}).status_code == 404
