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
    whole = client.get("/admin/feedback", params={"limit": 3}, headers=admin).json()
    assert len(whole["items"]) == 3 and whole["next_after_id"] is None  # an exactly full last page is the last

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


def test_feedback_round_trip_into_export_and_calibrate(client, stored, settings, monkeypatch, tmp_path, capsys):
    """Verdicts posted over HTTP come out of `qsim feedback export` as the pairs file calibrate
    reads, and `qsim calibrate --feedback` chooses exactly what `--pairs` on that file chooses."""
    import csv
    import shutil

    from app.cli import main
    from app.core.config import get_settings

    verdicts = []
    for i in range(30):
        target = stored[i]
        same = i % 2 == 0
        question = target["text"].lower() if same else stored[(i + 37) % len(stored)]["text"]
        body = {"question": question, "question_id": target["id"], "duplicate": same}
        assert client.post("/feedback", json=body).status_code == 201
        verdicts.append((question, target["text"], same))
    monkeypatch.setenv("QSIM_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    model = tmp_path / "model"
    shutil.copytree(settings.model_dir, model)
    try:
        pairs = tmp_path / "pairs.csv"
        assert main(["feedback", "export", "--out", str(pairs)]) == 0
        with pairs.open(newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["question", "stored_question", "duplicate"]
        assert rows[1:] == [[q, s, "1" if d else "0"] for q, s, d in verdicts]
        capsys.readouterr()
        common = ["calibrate", "--model", str(model), "--objective", "pairs", "--dry-run"]
        assert main([*common, "--pairs", str(pairs)]) == 0
        from_file = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chosen:")]
        assert main([*common, "--feedback"]) == 0
        from_database = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chosen:")]
        assert from_file and from_file == from_database
    finally:
        get_settings.cache_clear()


def test_calibrating_on_feedback_of_a_database_that_does_not_exist_says_so_and_creates_nothing(
    monkeypatch, tmp_path, tiny_model_dir, capsys
):
    from app.cli import main
    from app.core.config import get_settings

    missing = tmp_path / "no-such-dir" / "qsim.db"
    monkeypatch.setenv("QSIM_DATABASE_URL", f"sqlite:///{missing}")
    get_settings.cache_clear()
    try:
        code = main(["calibrate", "--model", str(tiny_model_dir), "--objective", "pairs", "--dry-run", "--feedback"])
        assert code == 2
        assert f"no database at {missing}" in capsys.readouterr().err
        assert not missing.parent.exists()
    finally:
        get_settings.cache_clear()
