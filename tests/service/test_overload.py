"""Saturation: the search queue is bounded; past it, requests get 503 with Retry-After at once
instead of waiting without bound, and the service answers normally again when load drops."""

from __future__ import annotations

import threading
import time

import pytest

from app.similarity.batcher import MicroBatcher, Overloaded
from tests.service_fixtures import hold_index_load, make_settings, start_client


def test_a_full_queue_answers_503_with_retry_after_and_recovers(database_url, tiny_model_dir, tmp_path, monkeypatch):
    settings = make_settings(database_url, tiny_model_dir, tmp_path, queue_max=2, batch_max_size=1)
    client = start_client(settings)
    try:
        encoder = client.app.state.runtime.applier.state.encoder
        release, busy = threading.Event(), threading.Event()
        real_encode = encoder.encode

        def slow_encode(texts, *args, **kwargs):
            busy.set()
            release.wait(30)
            return real_encode(texts, *args, **kwargs)

        monkeypatch.setattr(encoder, "encode", slow_encode)
        results: list[int] = []

        def ask():
            results.append(client.post("/questions/similar", json={"question": "card"}).status_code)

        first = threading.Thread(target=ask)
        first.start()
        assert busy.wait(10), "the first search should be encoding"  # the queue can take two more
        queued = [threading.Thread(target=ask) for _ in range(2)]
        for thread in queued:
            thread.start()
        while client.app.state.runtime.searches.depth < 2:
            pass
        refused = client.post("/questions/similar", json={"question": "card"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == str(settings.retry_after_seconds)
        assert "too busy" in refused.json()["detail"]
        release.set()
        for thread in [first, *queued]:
            thread.join()
        assert results == [200, 200, 200]
        assert client.post("/questions/similar", json={"question": "card"}).status_code == 200
        assert "qsim_overloaded_requests_total 1.0" in client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)


def test_batches_form_under_load_and_each_caller_gets_its_own_answer():
    seen_batches: list[int] = []
    taken: list[int] = []
    gate = threading.Event()

    def process(items):
        taken.append(len(items))
        gate.wait(10)
        seen_batches.append(len(items))
        return [item * 2 if item >= 0 else ValueError(f"negative {item}") for item in items]

    batcher = MicroBatcher(process, max_batch=8, max_wait_seconds=0.0, max_queue=100)
    answers: dict[int, object] = {}

    def call(value):
        try:
            answers[value] = batcher.submit(value, timeout=10)
        except ValueError as error:
            answers[value] = str(error)

    threads = [threading.Thread(target=call, args=(v,)) for v in [*range(10), -1]]
    for thread in threads:
        thread.start()
    # The first batch is held in `process`; wait until every other request has queued behind it.
    deadline = time.monotonic() + 10
    while sum(taken) + batcher.depth < 11 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert batcher.depth >= 2, "requests should be queued behind the running batch"
    gate.set()
    for thread in threads:
        thread.join()
    batcher.stop()
    assert answers == {**{v: v * 2 for v in range(10)}, -1: "negative -1"}
    assert max(seen_batches[1:]) > 1 and sum(seen_batches) == 11 and max(seen_batches) <= 8


def test_a_stopped_batcher_refuses_new_work():
    batcher = MicroBatcher(lambda items: items, max_batch=4, max_wait_seconds=0.0, max_queue=4)
    batcher.stop()
    with pytest.raises(Overloaded):
        batcher.submit(1)


def test_a_lone_caller_is_not_held_back_by_the_batch_wait_but_concurrent_callers_share_batches():
    seen_batches: list[int] = []

    def process(items):
        time.sleep(0.02)
        seen_batches.append(len(items))
        return list(items)

    batcher = MicroBatcher(process, max_batch=16, max_wait_seconds=0.5, max_queue=100)
    try:
        started = time.monotonic()
        for value in range(3):
            assert batcher.submit(value, timeout=5) == value
        assert time.monotonic() - started < 0.5, "one question at a time should never wait for company"

        threads = [threading.Thread(target=batcher.submit, args=(v, 5)) for v in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert max(seen_batches[3:]) > 1
        assert sum(seen_batches) == 15
    finally:
        batcher.stop()


def test_requests_to_a_worker_still_loading_all_get_their_503_after_the_load_wait(
    database_url, tiny_model_dir, tmp_path, monkeypatch
):
    # Each waiting request used to hold a thread of the event loop's small default pool for the
    # whole load wait, so with more waiters than threads the 503s came one pool-full at a time.
    from fastapi.testclient import TestClient

    from app.main import create_app

    loading = hold_index_load(monkeypatch)
    client = TestClient(create_app(make_settings(database_url, tiny_model_dir, tmp_path, load_wait_seconds=1.0)))
    client.__enter__()
    answers: list[tuple[float, int]] = []

    def ask():
        started = time.monotonic()
        response = client.post("/questions/similar", json={"question": "my card"})
        answers.append((time.monotonic() - started, response.status_code))

    try:
        askers = [threading.Thread(target=ask) for _ in range(24)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(30)
        assert [status for _, status in answers] == [503] * 24
        assert max(waited for waited, _ in answers) < 2.5, sorted(answers)
    finally:
        loading.set()
        client.__exit__(None, None, None)
