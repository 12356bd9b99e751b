"""Question CRUD over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations


def search(client, text, **options):
    response = client.post("/questions/similar", json={"question": text, **options})
    assert response.status_code == 200, response.text
    return response.json()


def ids_found(client, text, where=None) -> list[int]:
    return [r["id"] for r in search(client, text, threshold=1e-6, filter=where)["results"]]


def test_a_stored_question_is_searchable_as_soon_as_the_call_returns(client):
    response = client.post(
        "/questions",
        json={"text": "Why was my card payment declined?", "external_id": "desk-1", "answer": "Check the limit.",
              "metadata": {"category": "declined_card_payment"}},
    )
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"/questions/{created['id']}"
    assert created["external_id"] == "desk-1" and created["metadata"] == {"category": "declined_card_payment"}
    assert ids_found(client, "Why was my card payment declined?") == [created["id"]]


def test_get_and_list_pages_through_every_question(client, stored):
    assert client.get(f"/questions/{stored[0]['id']}").json()["text"] == stored[0]["text"]
    seen, after = [], 0
    while True:
        page = client.get("/questions", params={"limit": 30, "after_id": after}).json()
        assert page["total"] == len(stored)
        seen += [q["id"] for q in page["items"]]
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    assert seen == sorted(q["id"] for q in stored)


def test_unknown_question_is_404_with_a_message(client):
    response = client.get("/questions/987654")
    assert response.status_code == 404
    assert response.json()["detail"] == "question 987654 does not exist"
    assert client.patch("/questions/987654", json={"answer": "x"}).status_code == 404
    assert client.delete("/questions/987654").status_code == 404


def test_changing_the_text_re_encodes_it_and_other_fields_keep_the_codes(client, stored):
    target = stored[5]
    new_text = "How do I order a replacement metal card?"
    response = client.patch(f"/questions/{target['id']}", json={"text": new_text})
    assert response.status_code == 200 and response.json()["text"] == new_text
    assert target["id"] in ids_found(client, new_text)
    assert target["id"] not in ids_found(client, target["text"])
    before = client.post("/questions/encode", json={"question": new_text}).json()["samples"]
    response = client.patch(f"/questions/{target['id']}", json={"answer": "Order it in the app.", "metadata": None})
    assert response.json()["answer"] == "Order it in the app." and response.json()["metadata"] is None
    assert client.post("/questions/encode", json={"question": new_text}).json()["samples"] == before
    hit = search(client, new_text, threshold=1e-6)["results"][0]
    assert (hit["id"], hit["text"]) == (target["id"], new_text)


def test_patching_the_external_id_shows_in_search_results(client, stored):
    client.patch(f"/questions/{stored[2]['id']}", json={"external_id": "renamed"})
    assert search(client, stored[2]["text"], threshold=1e-6)["results"][0]["external_id"] == "renamed"


def test_text_cannot_be_patched_to_null(client, stored):
    response = client.patch(f"/questions/{stored[0]['id']}", json={"text": None})
    assert response.status_code == 422 and "text cannot be null" in response.json()["detail"]


def test_deleted_question_is_gone_from_storage_and_search(client, stored):
    target = stored[7]
    assert client.delete(f"/questions/{target['id']}").status_code == 204
    assert client.get(f"/questions/{target['id']}").status_code == 404
    assert target["id"] not in ids_found(client, target["text"])


def test_external_id_is_unique(client, stored):
    response = client.post("/questions", json={"text": "anything at all", "external_id": "q3"})
    assert response.status_code == 409
    assert "'q3'" in response.json()["detail"]
    response = client.patch(f"/questions/{stored[0]['id']}", json={"external_id": "q4"})
    assert response.status_code == 409


def test_bulk_is_all_or_nothing(client, stored):
    total = client.get("/questions").json()["total"]
    response = client.post(
        "/questions/bulk", json={"questions": [{"text": "brand new one", "external_id": "new-1"},
                                               {"text": "clashes", "external_id": "q1"}]},
    )
    assert response.status_code == 409 and response.json()["external_ids"] == ["q1"]
    assert client.get("/questions").json()["total"] == total
    assert ids_found(client, "brand new one") == []


def test_bulk_can_skip_or_update_existing_external_ids(client, stored):
    skip = client.post(
        "/questions/bulk",
        json={"questions": [{"text": "fresh question", "external_id": "fresh"}, {"text": "other", "external_id": "q1"}],
              "on_conflict": "skip"},
    ).json()
    assert (skip["created"], skip["updated"], skip["skipped"]) == (1, 0, 1)
    assert skip["items"][1]["text"] == stored[1]["text"]
    update = client.post(
        "/questions/bulk",
        json={"questions": [{"text": "updated text for q1", "external_id": "q1"}], "on_conflict": "update"},
    ).json()
    assert (update["created"], update["updated"]) == (0, 1)
    assert ids_found(client, "updated text for q1") == [stored[1]["id"]]


def test_a_bulk_update_replay_changes_nothing_like_a_put_replay(client):
    body = {"questions": [{"text": "refund for a card payment", "external_id": "rb1", "answer": "a",
                           "metadata": {"vip": 1}}], "on_conflict": "update"}
    first = client.post("/questions/bulk", json=body).json()
    revision = client.get("/readyz").json()["revision"]
    replay = client.post("/questions/bulk", json=body).json()
    assert (replay["created"], replay["updated"], replay["skipped"]) == (0, 0, 1)
    assert replay["items"] == first["items"]  # same updated_at
    assert client.get("/readyz").json()["revision"] == revision  # no change logged
    # true is not 1: a real change of the metadata is one
    changed = {"questions": [{**body["questions"][0], "metadata": {"vip": True}}], "on_conflict": "update"}
    assert client.post("/questions/bulk", json=changed).json()["updated"] == 1
    assert client.get(f"/questions/{first['items'][0]['id']}").json()["metadata"] == {"vip": True}


def test_bulk_rejects_an_external_id_twice_in_one_request(client):
    response = client.post(
        "/questions/bulk", json={"questions": [{"text": "a", "external_id": "x"}, {"text": "b", "external_id": "x"}]}
    )
    assert response.status_code == 422 and "'x' appears more than once" in response.json()["detail"]


def test_an_id_is_never_handed_out_twice_even_after_the_highest_is_deleted(client):
    first = client.post("/questions", json={"text": "Where is my new card?"}).json()["id"]
    last = client.post("/questions", json={"text": "How do I top up by bank transfer?"}).json()["id"]
    assert client.delete(f"/questions/{last}").status_code == 204
    newest = client.post("/questions", json={"text": "Can I freeze my card?"}).json()["id"]
    assert newest > last > first
    assert client.get(f"/questions/{last}").status_code == 404


def test_metadata_changes_between_true_and_1_are_stored_and_logged(client):
    created = client.post("/questions", json={"text": "Is my card blocked?", "external_id": "e1", "metadata": {"vip": 1}})
    question_id = created.json()["id"]
    patched = client.patch(f"/questions/{question_id}", json={"metadata": {"vip": True}})
    assert patched.status_code == 200 and patched.json()["metadata"] == {"vip": True}
    assert client.get(f"/questions/{question_id}").json()["metadata"] == {"vip": True}
    assert ids_found(client, "Is my card blocked?", {"vip": True}) == [question_id]
    assert ids_found(client, "Is my card blocked?", {"vip": 1}) == []

    put = client.put("/questions/by-external-id/e1", json={"text": "Is my card blocked?", "metadata": {"vip": 0.0}})
    assert put.status_code == 200 and client.get(f"/questions/{question_id}").json()["metadata"] == {"vip": 0.0}
    replay = client.put("/questions/by-external-id/e1", json={"text": "Is my card blocked?", "metadata": {"vip": 0.0}})
    assert replay.json()["updated_at"] == put.json()["updated_at"]  # the same document changes nothing



def test_an_exactly_full_last_page_says_it_is_the_last(client, stored):
    page = client.get("/questions", params={"limit": len(stored)}).json()
    assert len(page["items"]) == len(stored) and page["next_after_id"] is None
    first = client.get("/questions", params={"limit": len(stored) - 1}).json()
    assert first["next_after_id"] == first["items"][-1]["id"]
