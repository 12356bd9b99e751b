"""POST /questions/similar, /similar/batch and /encode: the rule, over HTTP."""

from __future__ import annotations

import numpy as np

from app.search.reference import brute_force_search


def test_a_stored_question_finds_itself_at_distance_zero(client, stored):
    text = stored[10]["text"]
    body = client.post("/questions/similar", json={"question": text, "threshold": 1e-9}).json()
    first = body["results"][0]
    assert (first["id"], first["text"], first["external_id"]) == (stored[10]["id"], text, "q10")
    assert first["distance"] == 0.0
    assert first["pairs_within"] >= body["model"]["samples"]  # at least the K identical pairs


def test_response_names_the_rule_and_model_and_uses_calibrated_defaults(client, stored, tiny_encoder):
    body = client.post("/questions/similar", json={"question": "my card has not arrived"}).json()
    assert body["question"] == "my card has not arrived"
    assert body["threshold"] == tiny_encoder.default_threshold
    assert body["min_pairs"] == tiny_encoder.default_min_pairs
    assert body["model"] == {"name": "tiny", "id": tiny_encoder.model_id, "metric": tiny_encoder.metric, "samples": 5}


def test_same_question_same_answer_every_time(client, stored):
    request = {"question": "When will my card arrive?", "threshold": 50.0, "limit": 20}
    answers = [client.post("/questions/similar", json=request).json() for _ in range(3)]
    assert answers[0]["results"] and answers[0] == answers[1] == answers[2]


def test_results_are_the_brute_force_rule_over_the_stored_codes(client, stored, tiny_encoder):
    texts = [q["text"] for q in stored]
    codes = tiny_encoder.sample(texts)
    ids = np.array([q["id"] for q in stored])
    for query in ["I still have not received my card", "How do I top up by card?"]:
        for threshold, min_pairs in [(3.0, 1), (4.0, 3), (1e12, 1)]:
            expected = brute_force_search(
                tiny_encoder.sample([query])[0], ids, codes, threshold=threshold, min_pairs=min_pairs, limit=15
            )
            request = {"question": query, "limit": 15, "threshold": threshold, "min_pairs": min_pairs}
            got = client.post("/questions/similar", json=request).json()["results"]
            assert [(r["id"], r["pairs_within"]) for r in got] == [(m.id, m.pairs_within) for m in expected]
            assert np.allclose([r["distance"] for r in got], [m.distance for m in expected], rtol=1e-9)


def test_batch_answers_each_question_as_the_single_route_does(client, stored):
    questions = ["lost my card", "exchange rate for euros", stored[3]["text"]]
    batch = client.post("/questions/similar/batch", json={"questions": questions, "threshold": 40.0}).json()
    assert [item["question"] for item in batch["results"]] == questions
    for question, item in zip(questions, batch["results"], strict=True):
        single = client.post("/questions/similar", json={"question": question, "threshold": 40.0}).json()
        assert item["results"] == single["results"]


def test_encode_returns_exactly_the_codes_the_index_holds(client, stored, tiny_encoder):
    body = client.post("/questions/encode", json={"question": stored[4]["text"]}).json()
    index = client.app.state.runtime.applier.state.index
    held = index.get_codes(np.array([stored[4]["id"]]))[0]
    assert np.array_equal(np.array(body["samples"], dtype=np.float32), held)
    assert len(body["mean"]) == len(body["scale"]) == tiny_encoder.latent_dim


def test_min_pairs_above_k_squared_is_a_clear_422(client, stored):
    response = client.post("/questions/similar", json={"question": "card", "min_pairs": 26})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body.min_pairs: min_pairs must be between 1 and 25")


def test_n_of_25_is_stricter_than_any_of_25(client, stored):
    request = {"question": "I still have not received my card", "threshold": 3.5, "limit": 100}
    loose = {r["id"] for r in client.post("/questions/similar", json=request).json()["results"]}
    strict = client.post("/questions/similar", json={**request, "min_pairs": 3}).json()["results"]
    assert 0 < len(strict) < len(loose)
    assert {r["id"] for r in strict} <= loose
    assert all(r["pairs_within"] >= 3 for r in strict)


def test_empty_store_answers_with_no_results(client):
    body = client.post("/questions/similar", json={"question": "anything"}).json()
    assert body["results"] == []
