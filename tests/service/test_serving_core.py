"""The serving core's contract: one change applier writes the index, searches and the readiness
probe never touch the database nor wait on another writer's encoding, and single searches,
batches and encodes share one bounded executor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from tests.service_fixtures import make_settings, start_client

SLOW = "slow write about a frozen card"


def block_encoding_of(encoder, monkeypatch, marker: str) -> tuple[threading.Event, threading.Event]:
    """Encoding any text that contains `marker` waits for `release` (`started` says it is waiting);
    every other text is encoded at once, by the real encoder."""
    started, release = threading.Event(), threading.Event()
    real_encode = encoder.encode

    def encode(texts, *args, **kwargs):  # under sample() too: it encodes through self.encode
        if any(marker in text for text in texts):
            started.set()
            release.wait(30)
        return real_encode(texts, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode", encode)
    return started, release


@contextmanager
def service_blocking_on(marker: str, database_url, model_dir, tmp_path, monkeypatch, **settings) -> Iterator[tuple]:
    """A service (with `settings`) whose encoder blocks on texts containing `marker`:
    yields (client, runtime, started, release); releases and stops on the way out."""
    client = start_client(make_settings(database_url, model_dir, tmp_path, **settings))
    runtime = client.app.state.runtime
    started, release = block_encoding_of(runtime.applier.state.encoder, monkeypatch, marker)
    try:
        yield client, runtime, started, release
    finally:
        release.set()
        client.__exit__(None, None, None)


def test_a_search_never_waits_for_another_writers_encoding(client, stored, monkeypatch):
    started, release = block_encoding_of(client.app.state.runtime.applier.state.encoder, monkeypatch, SLOW)
    written: list = []
    writer = threading.Thread(target=lambda: written.append(client.post("/questions", json={"text": SLOW})))
    writer.start()
    try:
        assert started.wait(10), "the applier should be encoding the write"
        began = time.monotonic()
        search = client.post("/questions/similar", json={"question": stored[0]["text"], "threshold": 1e-9})
        assert search.status_code == 200 and search.json()["results"][0]["id"] == stored[0]["id"]
        assert time.monotonic() - began < 5 and writer.is_alive(), "the search must not wait for the write"
        assert client.get("/readyz").status_code == 200
    finally:
        release.set()
        writer.join(30)
    assert written[0].status_code == 201
    found = client.post("/questions/similar", json={"question": SLOW, "threshold": 1e-9}).json()["results"]
    assert [r["id"] for r in found] == [written[0].json()["id"]], "a write is searchable when its call returns"


def test_searches_and_the_readiness_probe_never_touch_the_database(client, stored):
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(threading.current_thread().name)

    engine = client.app.state.runtime.db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for _ in range(5):
            assert client.post("/questions/similar", json={"question": stored[1]["text"]}).status_code == 200
            assert client.post("/questions/similar/batch", json={"questions": [stored[2]["text"], "card"]}).status_code == 200
            assert client.post("/questions/encode", json={"question": "card"}).status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [name for name in statements if name != "change-applier"] == []


def test_batches_and_encodes_obey_the_queue_bound_of_single_searches(database_url, tiny_model_dir, tmp_path, monkeypatch):
    with service_blocking_on(
        "blocking question", database_url, tiny_model_dir, tmp_path, monkeypatch, queue_max=4, batch_max_size=1
    ) as (client, runtime, started, release):
        answers: list[int] = []

        def post(path: str, body: dict) -> threading.Thread:
            thread = threading.Thread(target=lambda: answers.append(client.post(path, json=body).status_code))
            thread.start()
            return thread

        running = post("/questions/similar", {"question": "blocking question"})
        assert started.wait(10)
        queued = post("/questions/similar/batch", {"questions": ["card a", "card b", "card c"]})
        deadline = time.monotonic() + 10
        while runtime.searches.depth < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runtime.searches.depth == 3, "a batch weighs as many questions as it holds"
        too_big = client.post("/questions/similar/batch", json={"questions": ["card d", "card e"]})
        assert too_big.status_code == 503 and too_big.headers["retry-after"], "3 queued + 2 > 4"
        encoding = post("/questions/encode", {"question": "card"})  # fits: 4 queued
        while runtime.searches.depth < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        for path, body in [("/questions/encode", {"question": "card"}),
                           ("/questions/similar/batch", {"questions": ["card f"]}),
                           ("/questions/similar", {"question": "card g"})]:
            refused = client.post(path, json=body)
            assert refused.status_code == 503 and "too busy" in refused.json()["detail"], path
        release.set()
        for thread in (running, queued, encoding):
            thread.join(30)
        assert sorted(answers) == [200, 200, 200]
        assert client.post("/questions/similar/batch", json={"questions": ["card a", "card b"]}).status_code == 200


def test_batches_and_encodes_time_out_like_single_searches(database_url, tiny_model_dir, tmp_path, monkeypatch):
    with service_blocking_on(
        "blocking question", database_url, tiny_model_dir, tmp_path, monkeypatch, search_timeout_seconds=0.5,
        batch_max_size=1,
    ) as (client, _runtime, started, release):
        blocked = threading.Thread(target=lambda: client.post("/questions/similar", json={"question": "blocking question"}))
        blocked.start()
        assert started.wait(10)
        for path, body in [("/questions/similar/batch", {"questions": ["card a", "card b"]}),
                           ("/questions/encode", {"question": "card"})]:
            late = client.post(path, json=body)
            assert late.status_code == 503 and "not answered within 0.5 s" in late.json()["detail"], path
        release.set()
        blocked.join(30)


def test_a_filtered_search_never_returns_what_a_concurrent_write_put_outside_the_filter(client, monkeypatch):
    """The change applier may write between the catalog's answer to a filter and the index
    search: a question added for another tenant, or a question moved to another tenant, then
    must not appear in this tenant's results."""
    text = "Where is my new card?"
    moved = client.post("/questions", json={"text": text, "metadata": {"tenant": "acme"}}).json()["id"]
    state = client.app.state.runtime.applier.state
    real_search = state.index.search
    added = []

    def search_after_a_write(*args, **kwargs):
        if not added:  # the write lands after the filter was turned into ids, before the search
            added.append(client.post("/questions", json={"text": text, "metadata": {"tenant": "other"}}).json()["id"])
            assert client.patch(f"/questions/{moved}", json={"metadata": {"tenant": "other"}}).status_code == 200
        return real_search(*args, **kwargs)

    monkeypatch.setattr(state.index, "search", search_after_a_write)
    found = client.post("/questions/similar", json={"question": text, "threshold": 1e-6, "filter": {"tenant": "acme"}})
    assert found.status_code == 200 and added
    assert found.json()["results"] == []  # neither the other tenant's new question nor the moved one
    monkeypatch.undo()
    others = client.post("/questions/similar", json={"question": text, "threshold": 1e-6, "filter": {"tenant": "other"}})
    assert sorted(r["id"] for r in others.json()["results"]) == sorted([moved, added[0]])


def test_a_committed_write_is_never_answered_unavailable_by_a_blip_after_its_commit(client, monkeypatch):
    # After the commit the write waits for the other workers' progress, read from the database: a
    # failure there used to answer 503 "retry shortly", and the retry stored the question twice.
    from sqlalchemy.exc import OperationalError

    service_state = client.app.state.runtime.service_state
    real = service_state.live_replicas

    def blip(*args, **kwargs):
        monkeypatch.setattr(service_state, "live_replicas", real)
        raise OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(service_state, "live_replicas", blip)
    response = client.post("/questions", json={"text": "is my refund on its way"})
    assert response.status_code == 201, response.text
    assert client.get("/questions").json()["total"] == 1
    assert "qsim_lagging_writes_total 1.0" in client.get("/metrics").text
    found = client.post("/questions/similar", json={"question": "is my refund on its way", "threshold": 1e-9}).json()
    assert [r["id"] for r in found["results"]] == [response.json()["id"]]
