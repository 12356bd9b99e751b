"""One writer, many readers: searches run while batches are applied and segments merged, never
fail, and never see part of a batch."""

import math
import threading
import time

import numpy as np

from app.search import SimilarityIndex

GROUP = 7  # every write adds one group of ids and removes an older group, atomically


def group_ids(group: int) -> np.ndarray:
    return np.arange(group * GROUP, (group + 1) * GROUP, dtype=np.int64)


def test_readers_see_whole_batches_while_a_writer_applies_and_merges():
    rng = np.random.default_rng(2)
    index = SimilarityIndex(8, 3, "l2", model_id="m", device="cpu", merge_factor=3, merge_floor_questions=16)
    index.add(group_ids(0), rng.standard_normal((GROUP, 3, 8)).astype(np.float32), revision=0)
    query = rng.standard_normal((1, 3, 8)).astype(np.float32)
    stop = threading.Event()
    failures: list[BaseException] = []
    torn: list[list[int]] = []
    searches = [0]

    def read():
        try:
            while not stop.is_set():
                (matches,) = index.search(query, threshold=math.inf, limit=10_000)
                groups: dict[int, int] = {}
                for match in matches:
                    groups[match.id // GROUP] = groups.get(match.id // GROUP, 0) + 1
                if any(count != GROUP for count in groups.values()) or len(groups) not in (1, 2, 3, 4):
                    torn.append(sorted(m.id for m in matches))
                searches[0] += 1
        except BaseException as error:
            failures.append(error)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 2.0
    group = 1
    while time.monotonic() < deadline or group < 30:
        removed = group_ids(group - 3) if group >= 3 else None
        index.apply(group_ids(group), rng.standard_normal((GROUP, 3, 8)).astype(np.float32), removed, revision=group)
        group += 1
    stop.set()
    for reader in readers:
        reader.join()
    assert index.wait_for_merges(timeout=30)
    assert not failures, failures[0]
    assert not torn, torn[0]
    assert searches[0] > 10
    assert index.merge_error is None
    assert index.revision == group - 1
    assert sorted(index.ids().tolist()) == np.concatenate([group_ids(g) for g in range(group - 3, group)]).tolist()


def test_waiting_for_merges_while_another_thread_writes_never_raises(monkeypatch):
    import app.search.index as index_module

    class SlowToStart(threading.Thread):  # widens the moment between creating and starting it
        def start(self):
            time.sleep(0.01)
            super().start()

    monkeypatch.setattr(index_module.threading, "Thread", SlowToStart)
    index = SimilarityIndex(4, 3, "l2", model_id="m", device="cpu", merge_factor=2, merge_floor_questions=8)
    stop, errors = threading.Event(), []

    def waiter():
        while not stop.is_set():
            try:
                index.wait_for_merges()
            except RuntimeError as error:  # "cannot join thread before it is started"
                errors.append(error)

    thread = threading.Thread(target=waiter)
    thread.start()
    rng = np.random.default_rng(0)
    try:
        for _ in range(60):
            index.add(rng.choice(5000, 20, replace=False), rng.standard_normal((20, 3, 4)).astype(np.float32))
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert index.wait_for_merges(30)
