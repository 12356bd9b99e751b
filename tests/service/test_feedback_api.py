"""POST /feedback and GET /admin/feedback: agents' verdicts stored in SQL, read back paged, counted."""

from __future__ import annotations


def test_feedback_round_trip_is_stored_paged_and_counted(client, stored, admin):
    target = stored[5]
    sent = [
        {"question": "my card never came", "question_id": target["id"], "duplicate": True, "source": "agent-7"},
        {"question": "how do I close my account", "question_id": target["id"], "duplicate": False},
        {"question": "card still missing", "question_id": stored[6]["id"], "duplicate": True},
    ]
    created = []
    for body in sent:
        response = client.post("/feedback", json=body)
        assert response.status_code == 201, response.text
        created.append(response.json())
    first = created[0]
    assert (first["question"], first["question_id"], first["duplicate"], first["source"]) == (
        "my card never came", target["id"], True, "agent-7"
    )
    assert first["stored_text"] == target["text"]
    assert created[1]["source"] is None

    page = client.get("/admin/feedback", params={"limit": 2}, headers=admin).json()
    assert page["total"] == 3
    assert [item["id"] for item in page["items"]] == [created[0]["id"], created[1]["id"]]
    rest = client.get("/admin/feedback", params={"limit": 2, "after_id": page["next_after_id"]}, headers=admin).json()
    assert [item["id"] for item in rest["items"]] == [created[2]["id"]] and rest["next_after_id"] is None

    metrics = client.get("/metrics").text
    assert 'qsim_feedback_total{verdict="duplicate"} 2.0' in metrics
    assert 'qsim_feedback_total{verdict="not_duplicate"} 1.0' in metrics


def test_feedback_on_an_unknown_question_is_404(client, stored):
    response = client.post("/feedback", json={"question": "anything", "question_id": 987654, "duplicate": True})
    assert response.status_code == 404
    assert response.json()["detail"] == "question 987654 does not exist"


def test_feedback_survives_the_stored_question_being_deleted(client, stored, admin):
    target = stored[7]
    assert client.post("/feedback", json={"question": "q", "question_id": target["id"], "duplicate": False}).status_code == 201
    assert client.delete(f"/questions/{target['id']}").status_code == 204
    item = client.get("/admin/feedback", headers=admin).json()["items"][0]
    assert item["stored_text"] == target["text"]


def test_bad_feedback_is_a_422_naming_the_field(client, stored):
    cases = [
        ({"question": "q", "question_id": stored[0]["id"]}, "body.duplicate"),
        ({"question": "  ", "question_id": stored[0]["id"], "duplicate": True}, "body.question"),
        ({"question": "q", "question_id": "1", "duplicate": True}, "body.question_id"),
        ({"question": "q", "question_id": stored[0]["id"], "duplicate": 1}, "body.duplicate"),
        ({"question": "q", "question_id": stored[0]["id"], "duplicate": True, "extra": 1}, "body.extra"),
    ]
    for body, field in cases:
        response = client.post("/feedback", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"].startswith(field), response.json()


def test_listing_feedback_needs_the_admin_token(client):
    assert client.get("/admin/feedback").status_code == 401
