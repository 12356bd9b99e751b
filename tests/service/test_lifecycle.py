"""Restarts: the saved index is reused, caught up with the change log, and reconciled with the
database; a damaged or foreign index is rebuilt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app.core.db import open_database
from app.questions import repository
from app.questions.importer import import_questions
from app.questions.repository import NewQuestion
from app.similarity.applier import ChangeApplier
from app.similarity.state import StateBuilder
from tests.service_fixtures import start_client


def stop(client) -> None:
    client.__exit__(None, None, None)


def indexed_ids(client) -> set[int]:
    return {int(i) for i in client.app.state.runtime.applier.state.index.ids()}


def stored_ids(settings) -> set[int]:
    database = open_database(settings.database_url)
    with database.reading() as session:
        ids = {row[0] for row in session.execute(text("SELECT id FROM questions"))}
    database.dispose()
    return ids


def wait_until_not_indexed(client, question_id: int, timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while question_id in indexed_ids(client):
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def found(client, question: str) -> list[int]:
    body = client.post("/questions/similar", json={"question": question, "threshold": 1e-9}).json()
    return [r["id"] for r in body["results"]]


@pytest.fixture
def first_run(settings, tiny_corpus_rows):
    """A service that stored 60 questions and shut down gracefully (saving its index)."""
    client = start_client(settings)
    items = [{"text": row["text"], "external_id": f"e{i}"} for i, row in enumerate(tiny_corpus_rows[:60])]
    stored = client.post("/questions/bulk", json={"questions": items}).json()["items"]
    stop(client)
    return stored


def test_graceful_shutdown_saves_and_a_restart_reuses_the_index(settings, first_run, monkeypatch):
    assert any(Path(settings.index_dir).rglob("*"))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the saved index should have been reused, not rebuilt")

    monkeypatch.setattr(StateBuilder, "build", no_rebuild)
    client = start_client(settings)
    try:
        assert indexed_ids(client) == {q["id"] for q in first_run}
        assert found(client, first_run[0]["text"])[0] == first_run[0]["id"]
    finally:
        stop(client)


def test_changes_made_while_the_service_was_down_are_applied_at_start(settings, first_run):
    database = open_database(settings.database_url)
    import_questions(database, [NewQuestion("imported while the service was down", external_id="offline-1"),
                                NewQuestion("a new text for e1", external_id="e1")])
    database.dispose()
    client = start_client(settings)
    try:
        assert found(client, "imported while the service was down")
        assert found(client, "a new text for e1") == [first_run[1]["id"]]
        assert indexed_ids(client) == stored_ids(settings)
    finally:
        stop(client)


def test_drift_the_change_log_does_not_show_is_reconciled(settings, first_run):
    database = open_database(settings.database_url)
    with database.writing() as session:  # behind qsim's back: no change-log entries
        session.execute(text("DELETE FROM questions WHERE id = :id"), {"id": first_run[0]["id"]})
        session.execute(
            text("INSERT INTO questions (text, created_at, updated_at) VALUES ('inserted by hand', :now, :now)"),
            {"now": "2026-01-01 00:00:00"},
        )
    database.dispose()
    client = start_client(settings)
    try:
        assert indexed_ids(client) == stored_ids(settings)
        assert first_run[0]["id"] not in indexed_ids(client)
        assert found(client, "inserted by hand")
    finally:
        stop(client)


def test_a_damaged_saved_index_is_rebuilt(settings, first_run):
    for path in Path(settings.index_dir).rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    client = start_client(settings)
    try:
        assert indexed_ids(client) == {q["id"] for q in first_run}
    finally:
        stop(client)


def test_an_index_saved_for_another_database_is_not_used(settings, first_run, tmp_path, tiny_model_dir):
    from app.core.migrations import upgrade_to_head
    from tests.service_fixtures import make_settings

    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_to_head(other_url)
    client = start_client(make_settings(other_url, tiny_model_dir, tmp_path))  # same index_dir
    try:
        assert indexed_ids(client) == set()
    finally:
        stop(client)


def test_an_approximate_kind_can_be_chosen_and_a_change_of_kind_rebuilds(settings, first_run):
    approximate = settings.model_copy(update={"index_kind": "hnsw"})
    client = start_client(approximate)
    try:
        ready = client.get("/readyz").json()
        assert ready["index_kind"] == "hnsw" and ready["questions"] == len(first_run)
        hit = client.post("/questions/similar", json={"question": first_run[3]["text"], "threshold": 1e-9}).json()
        assert hit["results"][0]["id"] == first_run[3]["id"]
    finally:
        stop(client)
    client = start_client(settings)  # back to exact: the hnsw index on disk is not reused
    try:
        assert client.get("/readyz").json()["index_kind"] == "exact"
    finally:
        stop(client)


def test_a_search_that_arrives_while_the_index_loads_waits_for_it(settings, first_run, monkeypatch):
    """With several workers the readiness probe answers from one of them; a search that reaches
    another still loading its index is answered once it has loaded, not refused."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    real_load = ChangeApplier.load_now

    def slow_load(self, *args, **kwargs):
        time.sleep(1.0)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ChangeApplier, "load_now", slow_load)
    client = TestClient(create_app(settings))
    client.__enter__()
    try:
        assert client.get("/readyz").status_code == 503
        assert found(client, first_run[0]["text"])[0] == first_run[0]["id"]
    finally:
        stop(client)


@pytest.mark.parametrize("start", ["saved index", "rebuilt index"])
def test_a_loading_worker_registers_as_a_replica_before_its_last_catch_up(settings, first_run, monkeypatch, start):
    """A write waits only for the replicas registered when it asks. A worker that registered after
    its last catch-up could miss a write acknowledged in between and then answer without it; one
    registered before it either gets that write in the catch-up or is waited for."""
    import shutil

    from app.similarity import applier as applier_module

    if start == "rebuilt index":
        shutil.rmtree(settings.index_dir)
    database = open_database(settings.database_url)
    loading, active = ChangeApplier.for_tools(database, settings)
    registered_at_catch_up = []
    real_catch_up = applier_module.catch_up

    def watched_catch_up(db, state, *args, **kwargs):
        registered_at_catch_up.append({r.replica_id for r in loading.service_state.live_replicas(60)})
        return real_catch_up(db, state, *args, **kwargs)

    monkeypatch.setattr(applier_module, "catch_up", watched_catch_up)
    try:
        state = loading.load_now(loading.builder.load_encoder(active.path), active.generation)
        assert registered_at_catch_up and all(loading.replica_id in ids for ids in registered_at_catch_up)
        reported = {r.replica_id: r.revision for r in loading.service_state.live_replicas(60)}
        with database.reading() as session:
            assert reported[loading.replica_id] == state.revision == repository.last_change(session)
    finally:
        database.dispose()


def test_a_write_on_a_worker_still_loading_waits_for_the_workers_already_serving(settings, first_run):
    """A worker that has not loaded its index yet accepts writes (its own load replays them), but
    the call returns only when the workers already answering searches have the change too: else the
    next search, sent to one of them, would not find it."""
    import threading

    from app.admin.repository import ReplicaProgress

    database = open_database(settings.database_url)
    loading, _ = ChangeApplier.for_tools(database, settings)
    try:
        with database.reading() as session:
            revision = repository.last_change(session)
        serving = ReplicaProgress("a-serving-worker", revision - 1, 0, time.time())
        loading.service_state.record_replica(serving)
        assert not loading.loaded
        assert loading.wait_visible(revision, timeout=0.3) is False

        def serving_worker_applies():
            time.sleep(0.2)
            loading.service_state.record_replica(ReplicaProgress("a-serving-worker", revision, 0, time.time()))

        applying = threading.Thread(target=serving_worker_applies)
        applying.start()
        started = time.monotonic()
        assert loading.wait_visible(revision, timeout=5) is True
        assert time.monotonic() - started >= 0.2
        applying.join()
    finally:
        loading.service_state.forget_replica("a-serving-worker")
        database.dispose()


def test_an_index_rebuilt_page_by_page_is_served_as_one_segment(settings, first_run, monkeypatch):
    # Each search pays a fixed cost per segment: a rebuild must not leave one segment per page read.
    paged = repository.iter_summaries
    monkeypatch.setattr(repository, "iter_summaries", lambda session, after_id=0: paged(session, 7, after_id))
    for path in Path(settings.index_dir).rglob("*"):
        if path.is_file():
            path.unlink()
    client = start_client(settings)
    try:
        index = client.app.state.runtime.applier.state.index
        assert indexed_ids(client) == {q["id"] for q in first_run}
        assert index.segment_count == 1
    finally:
        stop(client)


def test_a_worker_busy_in_a_long_poll_stays_a_live_replica_until_the_switch_timeout(settings, monkeypatch):
    """Following another worker's model switch (or catching up a big import) can take longer than
    QSIM_REPLICA_TIMEOUT_SECONDS: the worker must keep counting as live (writes and switches wait for
    it), but one stuck past QSIM_MODEL_SWITCH_TIMEOUT_SECONDS ages out instead of holding writes up."""
    import threading

    settings = settings.model_copy(update={
        "replica_heartbeat_seconds": 0.1, "replica_timeout_seconds": 1.0, "model_switch_timeout_seconds": 4.0,
    })
    client = start_client(settings)
    applier = client.app.state.runtime.applier
    busy, release = threading.Event(), threading.Event()
    real_poll = ChangeApplier.poll

    def long_poll(self):
        if not release.is_set():
            busy.set()
            release.wait(10)
        return real_poll(self)

    monkeypatch.setattr(ChangeApplier, "poll", long_poll)
    try:
        assert busy.wait(5)
        began = time.monotonic()
        live = lambda: applier.replica_id in {r.replica_id for r in applier.service_state.live_replicas(1.0)}  # noqa: E731
        while time.monotonic() - began < 2.5:  # well past the 1 s replica timeout
            assert live()
            time.sleep(0.25)
        deadline = time.monotonic() + 15
        while live():  # past the 4 s switch timeout it stops beating and ages out
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert time.monotonic() - began > 4.0
        release.set()
        deadline = time.monotonic() + 5
        while not live():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        release.set()
        stop(client)


@pytest.mark.parametrize("how", ["replaced", "restored", "without an id"])
def test_a_database_replaced_or_restored_under_a_running_worker_is_noticed_and_the_index_rebuilt(
    settings, monkeypatch, how
):
    """A start-up refuses a saved index made for another database or ahead of this one; a running
    worker must too, or it serves the old database's questions and claims a revision the new one
    has not reached (writes would then not wait for it). While it rebuilds it reports itself
    behind, and it rebuilds once."""
    client = start_client(settings)
    applier = client.app.state.runtime.applier
    builds, reported_while_building = [], []
    real_build = StateBuilder.build

    def watched_build(self, *args, **kwargs):
        builds.append(1)
        reported_while_building.extend(
            r.revision for r in applier.service_state.live_replicas(60) if r.replica_id == applier.replica_id
        )
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(StateBuilder, "build", watched_build)
    try:
        items = [{"text": f"question number {i} about my card", "external_id": f"x{i}"} for i in range(5)]
        stored = client.post("/questions/bulk", json={"questions": items}).json()["items"]
        gone = stored[0]["id"]
        assert gone in indexed_ids(client)
        database = open_database(settings.database_url)
        with database.writing() as session:  # what the other database holds: no question `gone`, no record of it
            session.execute(text("DELETE FROM question_changes WHERE question_id = :id"), {"id": gone})
            session.execute(text("DELETE FROM questions WHERE id = :id"), {"id": gone})
            if how == "replaced":
                session.execute(text("UPDATE service_state SET value = 'another-database' WHERE key = 'database_id'"))
            elif how == "restored":
                session.execute(text("DELETE FROM question_changes WHERE seq > 1"))
            else:
                session.execute(text("DELETE FROM service_state WHERE key = 'database_id'"))
        database.dispose()
        wait_until_not_indexed(client, gone, 10, "the worker still serves the old database's question")
        assert indexed_ids(client) == stored_ids(settings)
        status = client.get("/readyz").json()
        assert status["status"] == "ready", status
        time.sleep(0.5)  # several more polls
        assert builds == [1] and reported_while_building == [0]
    finally:
        stop(client)


def test_a_rebuild_for_a_replaced_database_that_fails_is_tried_again(settings, monkeypatch):
    client = start_client(settings)
    real_build = StateBuilder.build
    attempts = []

    def failing_once(self, *args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk full while building")
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(StateBuilder, "build", failing_once)
    try:
        gone = client.post("/questions", json={"text": "only in the old database"}).json()["id"]
        client.post("/questions", json={"text": "in both"})  # the log's end stays where the index is
        database = open_database(settings.database_url)
        with database.writing() as session:
            session.execute(text("DELETE FROM question_changes WHERE question_id = :id"), {"id": gone})
            session.execute(text("DELETE FROM questions WHERE id = :id"), {"id": gone})
            session.execute(text("UPDATE service_state SET value = 'another-database' WHERE key = 'database_id'"))
        database.dispose()
        wait_until_not_indexed(client, gone, 15, "the failed rebuild was not tried again")
        assert len(attempts) == 2
    finally:
        stop(client)


def test_a_write_committed_while_a_worker_reconciles_its_load_is_in_the_index_it_publishes(settings, first_run, monkeypatch):
    """Such a write's call sees no live index on this worker and waits only for the others: the load
    must not publish an index without it."""
    from app.similarity import applier as applier_module

    database = open_database(settings.database_url)
    loading, active = ChangeApplier.for_tools(database, settings)
    written = []
    real_reconcile = applier_module.reconcile

    def reconcile_while_a_write_lands(state):
        with database.writing() as session:
            written.extend(q.id for q in repository.create(session, [NewQuestion("a question written mid-load")]))
        return real_reconcile(state)

    monkeypatch.setattr(applier_module, "reconcile", reconcile_while_a_write_lands)
    try:
        state = loading.load_now(loading.builder.load_encoder(active.path), active.generation)
        with database.reading() as session:
            assert state.revision == repository.last_change(session)
        assert written and written[0] in set(state.index.ids().tolist())
    finally:
        database.dispose()


def test_a_restart_that_caught_up_with_the_log_saves_the_caught_up_index(settings, first_run):
    """The index on disk is the one loaded, older than the live one after the catch-up: a save must
    write it, or every restart replays (and re-encodes) the same changes again."""
    database = open_database(settings.database_url)
    with database.writing() as session:
        repository.create(session, [NewQuestion("a question written while the service was down")])
    with database.reading() as session:
        latest = repository.last_change(session)
    loading, active = ChangeApplier.for_tools(database, settings)
    try:
        encoder = loading.builder.load_encoder(active.path)
        assert loading.builder.load_saved(encoder, active.generation).revision < latest
        assert loading.load_now(encoder, active.generation).revision == latest
        assert loading.save() is True
        assert loading.builder.load_saved(encoder, active.generation).revision == latest
    finally:
        database.dispose()


def test_a_model_switch_waits_for_a_worker_whose_beats_paused_for_a_few_seconds(settings, first_run):
    """A write stops waiting for a worker not heard from for QSIM_REPLICA_TIMEOUT_SECONDS; a switch
    waits longer for it: given up on, it would answer with the previous model after the switch."""
    from app.admin.repository import ReplicaProgress

    database = open_database(settings.database_url)
    switcher, _ = ChangeApplier.for_tools(database, settings)
    paused = time.time() - 3 * settings.replica_timeout_seconds
    try:
        switcher.service_state.record_replica(ReplicaProgress("a-loaded-worker", 0, 0, paused))
        assert switcher.wait_followers(1, timeout=0.3) is False  # still behind, still waited for
        assert switcher._wait_replicas(lambda r: r.generation >= 1, time.monotonic() + 0.3, "generation 1") is True
        switcher.service_state.record_replica(ReplicaProgress("a-loaded-worker", 0, 1, time.time()))
        assert switcher.wait_followers(1, timeout=2) is True
        gone = time.time() - 60
        switcher.service_state.record_replica(ReplicaProgress("a-loaded-worker", 0, 0, gone))
        assert switcher.wait_followers(2, timeout=2) is True  # one gone for a minute is not waited for
    finally:
        switcher.service_state.forget_replica("a-loaded-worker")
        database.dispose()
