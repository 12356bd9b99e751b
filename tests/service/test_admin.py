"""Admin routes: bearer-token auth and reindex jobs that never take search down."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tests.service_fixtures import ADMIN_TOKEN, make_settings, start_client


def wait_for_job(client, admin, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/admin/jobs/{job_id}", headers=admin).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}, {"Authorization": "Bearer"}],
)
def test_admin_routes_reject_missing_or_wrong_tokens(client, headers):
    for method, path in [("post", "/admin/reindex"), ("get", "/admin/jobs/00000000-0000-0000-0000-000000000000")]:
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_admin_api_is_off_without_a_configured_token(database_url, tiny_model_dir, tmp_path):
    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path, admin_token=None))
    try:
        response = client.post("/admin/reindex", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403
        assert "QSIM_ADMIN_TOKEN" in response.json()["detail"]
    finally:
        client.__exit__(None, None, None)


def test_production_refuses_to_start_without_a_token(database_url, tiny_model_dir, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="QSIM_ADMIN_TOKEN must be set"):
        make_settings(database_url, tiny_model_dir, tmp_path, env="production", admin_token=None)


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_production_refuses_a_token_of_whitespace_only(database_url, tiny_model_dir, tmp_path, blank):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="QSIM_ADMIN_TOKEN must be set"):
        make_settings(database_url, tiny_model_dir, tmp_path, env="production", admin_token=blank)


def test_a_token_configured_with_surrounding_whitespace_is_the_token_without_it(database_url, tiny_model_dir, tmp_path):
    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path, admin_token=" s3cret\n"))
    try:
        job = "/admin/jobs/00000000-0000-0000-0000-000000000000"
        assert client.get(job, headers={"Authorization": "Bearer s3cret"}).status_code == 404  # past the check
        assert client.get(job, headers={"Authorization": "Bearer s3cre"}).status_code == 401
    finally:
        client.__exit__(None, None, None)


def test_unknown_job_is_404(client, admin):
    response = client.get("/admin/jobs/00000000-0000-0000-0000-000000000000", headers=admin)
    assert response.status_code == 404
    assert client.get("/admin/jobs/not-a-uuid", headers=admin).status_code == 422


def test_reindex_rebuilds_the_same_index(client, admin, stored):
    applier = client.app.state.runtime.applier
    before = applier.state.index
    ids, codes = before.ids(), before.get_codes(before.ids())  # a retired Milvus collection is dropped
    response = client.post("/admin/reindex", headers=admin)
    assert response.status_code == 202
    job = wait_for_job(client, admin, response.json()["job_id"])
    assert (job["status"], job["progress"], job["error"]) == ("succeeded", 1.0, None)
    after = applier.state.index
    assert after is not before
    assert (after.ids() == ids).all() and (after.get_codes(ids) == codes).all()


@pytest.mark.parametrize("name", ["../tiny", "nope", "/etc", "tiny/../tiny"])
def test_reindex_only_takes_model_names_under_the_models_root(client, admin, name):
    response = client.post("/admin/reindex", headers=admin, json={"model": name})
    assert response.status_code == 422


def test_searches_keep_answering_during_a_reindex_and_writes_made_meanwhile_are_in_the_new_index(
    client, admin, stored
):
    errors: list[str] = []
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            response = client.post("/questions/similar", json={"question": stored[0]["text"], "threshold": 1e-9})
            if response.status_code != 200 or response.json()["results"][0]["id"] != stored[0]["id"]:
                errors.append(response.text)

    readers = [threading.Thread(target=searcher) for _ in range(3)]
    for reader in readers:
        reader.start()
    job_id = client.post("/admin/reindex", headers=admin).json()["job_id"]
    added, deleted, changed = [], [stored[1]["id"], stored[2]["id"]], stored[3]["id"]
    for i in range(10):
        added.append(client.post("/questions", json={"text": f"added during reindex number {i}"}).json()["id"])
    for question_id in deleted:
        client.delete(f"/questions/{question_id}")
    client.patch(f"/questions/{changed}", json={"text": "changed during the reindex"})
    job = wait_for_job(client, admin, job_id)
    stop.set()
    for reader in readers:
        reader.join()
    assert job["status"] == "succeeded" and errors == []
    index = client.app.state.runtime.applier.state.index
    stored_ids = {q["id"] for q in stored}
    assert set(index.ids()) == (stored_ids | set(added)) - set(deleted)
    found = client.post("/questions/similar", json={"question": "changed during the reindex", "threshold": 1e-9}).json()
    assert found["results"][0]["id"] == changed


def test_reindex_with_another_model_switches_the_served_model(client, admin, stored, tiny_model_dir, tiny_encoder):
    other = tiny_model_dir.parent / "tiny-copy"
    if not other.exists():
        shutil.copytree(tiny_model_dir, other)
    serving = 'qsim_model_info{{model_id="{}",name="{}"}} {}'
    assert serving.format(tiny_encoder.model_id, "tiny", "1.0") in client.get("/metrics").text
    response = client.post("/admin/reindex", headers=admin, json={"model": "tiny-copy"})
    job = wait_for_job(client, admin, response.json()["job_id"])
    assert job["status"] == "succeeded" and job["model"] == "tiny-copy"
    body = client.post("/questions/similar", json={"question": "card"}).json()
    assert body["model"]["name"] == "tiny-copy" and body["model"]["id"] == tiny_encoder.model_id
    # The old model's series goes to 0 (labels cannot be cleared with several workers' metrics files).
    metrics = client.get("/metrics").text
    assert serving.format(tiny_encoder.model_id, "tiny-copy", "1.0") in metrics
    assert serving.format(tiny_encoder.model_id, "tiny", "0.0") in metrics


def test_a_failed_reindex_leaves_the_old_index_serving(client, admin, stored, tiny_model_dir):
    broken = tiny_model_dir.parent / "tiny-broken"
    if not broken.exists():
        shutil.copytree(tiny_model_dir, broken)
        (broken / "model.pt").write_bytes(b"not a model")
    before = client.app.state.runtime.applier.state
    job = wait_for_job(client, admin, client.post("/admin/reindex", headers=admin, json={"model": "tiny-broken"}).json()["job_id"])
    assert job["status"] == "failed" and "model.pt" in job["error"]
    assert client.app.state.runtime.applier.state is before
    assert client.post("/questions/similar", json={"question": stored[0]["text"], "threshold": 1e-9}).json()["results"]


def test_one_reindex_at_a_time(client, admin, stored, monkeypatch):
    builder = client.app.state.runtime.builder
    release = threading.Event()
    real_build = builder.build

    def build_when_released(*args, **kwargs):
        release.wait(30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(builder, "build", build_when_released)
    first = client.post("/admin/reindex", headers=admin).json()["job_id"]
    assert client.get(f"/admin/jobs/{first}", headers=admin).json()["status"] in ("queued", "running")
    second = client.post("/admin/reindex", headers=admin)
    assert second.status_code == 409
    assert second.json()["job_id"] == first and "already running" in second.json()["detail"]
    release.set()
    assert wait_for_job(client, admin, first)["status"] == "succeeded"
    assert client.post("/admin/reindex", headers=admin).status_code == 202


def test_a_job_a_killed_process_left_running_reads_failed_once_its_heartbeat_is_stale(client, admin):
    # kill -9 (or a shutdown whose grace ran out) leaves the row "running" with a fresh heartbeat;
    # after a quick restart the start-up check saw it fresh, and polling clients read "running" forever.
    from datetime import timedelta

    from app.admin.models import Job
    from app.admin.service import STALE_AFTER
    from app.questions.models import utcnow

    with client.app.state.runtime.db.writing() as session:
        session.add(Job(id="11111111-1111-1111-1111-111111111111", kind="reindex", status="running", progress=0.3,
                        created_at=utcnow() - 2 * STALE_AFTER, heartbeat_at=utcnow() - STALE_AFTER - timedelta(seconds=1)))
    job = client.get("/admin/jobs/11111111-1111-1111-1111-111111111111", headers=admin).json()
    assert job["status"] == "failed" and "interrupted" in job["error"]


def test_a_reindex_still_running_when_the_shutdown_grace_ends_is_recorded_interrupted(
    database_url, tiny_model_dir, tmp_path, monkeypatch
):
    from app.admin.models import Job
    from app.core.db import open_database

    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path, shutdown_grace_seconds=0.2))
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    release = threading.Event()
    builder = client.app.state.runtime.builder
    real_build = builder.build
    monkeypatch.setattr(builder, "build", lambda *a, **k: (release.wait(30), real_build(*a, **k))[1])
    job_id = client.post("/admin/reindex", headers=admin).json()["job_id"]
    try:
        client.__exit__(None, None, None)
        database = open_database(database_url)
        with database.reading() as session:
            job = session.get(Job, job_id)
            assert job.status == "failed" and "interrupted" in job.error
        database.dispose()
    finally:
        release.set()


def test_a_rebuild_that_ends_after_another_workers_model_switch_is_refused_not_served(
    client, stored, other_tiny_model_dir
):
    from app.similarity.applier import ModelChangedDuringRebuild

    runtime = client.app.state.runtime
    live = runtime.applier.state
    stale = runtime.builder.build(live.encoder, live.generation)  # a rebuild with the served model...
    switched = runtime.reindex(model_dir=other_tiny_model_dir)  # ...while every worker moved on
    with pytest.raises(ModelChangedDuringRebuild, match="reindex again"):
        runtime.applier.switch(stale)
    assert runtime.applier.state.encoder.model_id == switched.encoder.model_id != live.encoder.model_id
    assert runtime.applier.state.generation == switched.generation


def test_a_job_another_worker_runs_silently_for_longer_than_the_stale_limit_still_reads_running(
    database_url, tiny_model_dir, tmp_path, monkeypatch
):
    # Reading a job records a stale one failed: a live job whose work reports no progress for a
    # while (a compaction, a save, the wait for other workers) must keep beating, or another
    # worker's read would call it interrupted and accept a second reindex beside it.
    from datetime import timedelta

    import app.admin.service as jobs_module
    from app.admin.service import JobManager
    from app.core.db import open_database

    monkeypatch.setattr(jobs_module, "STALE_AFTER", timedelta(seconds=0.6))
    monkeypatch.setattr(jobs_module, "HEARTBEAT_SECONDS", 0.1)
    client = start_client(make_settings(database_url, tiny_model_dir, tmp_path))  # migrates the database
    database = open_database(database_url)
    release = threading.Event()
    try:
        owner = JobManager(database, reindex=lambda model_dir, progress: release.wait(30))
        other = JobManager(database, reindex=lambda model_dir, progress: None)
        job = owner.start_reindex(None, None)
        time.sleep(1.5)  # well past the stale limit without a progress report
        assert other.get(job.id).status == "running"
        release.set()
        deadline = time.monotonic() + 10
        while other.get(job.id).status != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        release.set()
        database.dispose()
        client.__exit__(None, None, None)
