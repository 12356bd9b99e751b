"""kill -9 at random moments during bulk import, reindex and index saves. After a restart the
service is ready, every acknowledged write is in the database and in the index, nothing
unacknowledged is half there, and the saved index is never torn.

CI runs a few seeded trials; `make test-long` (QSIM_LONG_TESTS=1) runs at least 24."""

from __future__ import annotations

import os
import random
import threading
import time

import httpx
import pytest

from app.search import IndexFileError, SimilarityIndex
from tests.conftest import require_milvus
from tests.reliability.service_process import ServiceProcess, service_env

LONG = os.environ.get("QSIM_LONG_TESTS") == "1"
TRIALS_PER_OPERATION = 8 if LONG else 1
BATCH = 25


def questions_of(batch_number: int) -> list[dict]:
    return [{"text": f"crash trial question {batch_number}-{i} about my card", "external_id": f"b{batch_number}-{i}"}
            for i in range(BATCH)]


def writer(service: ServiceProcess, acknowledged: list[int], attempted: list[int], stop: threading.Event, start_at: int):
    number = start_at
    with httpx.Client(base_url=service.base, timeout=10) as client:
        while not stop.is_set():
            attempted.append(number)
            try:
                response = client.post("/questions/bulk", json={"questions": questions_of(number)})
            except httpx.TransportError:
                return  # the service died under us: this batch is unacknowledged
            if response.status_code == 201:
                acknowledged.append(number)
            number += 1


def check_after_restart(service: ServiceProcess, acknowledged: list[int], attempted: list[int]) -> None:
    with httpx.Client(base_url=service.base, timeout=30) as client:
        stored: dict[str, int] = {}
        after = 0
        while True:
            page = client.get("/questions", params={"limit": 500, "after_id": after}).json()
            stored.update({q["external_id"]: q["id"] for q in page["items"]})
            if page["next_after_id"] is None:
                break
            after = page["next_after_id"]
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["questions"] == len(stored), ready
        for number in attempted:
            present = [f"b{number}-{i}" in stored for i in range(BATCH)]
            assert all(present) or not any(present), f"batch {number} is half there"
            if number in acknowledged:
                assert all(present), f"acknowledged batch {number} lost"
        for number in {n for n in attempted if f"b{n}-0" in stored}:
            probe = questions_of(number)[number % BATCH]
            hits = client.post("/questions/similar", json={"question": probe["text"], "threshold": 1e-9}).json()
            assert stored[probe["external_id"]] in [h["id"] for h in hits["results"]], f"batch {number} not indexed"


def assert_saved_index_loads(index_dir) -> None:
    """Every saved index (<index dir>/<database id>/<model id>) loads."""
    saved = [path for path in index_dir.glob("*/*") if SimilarityIndex.exists(path)] if index_dir.exists() else []
    for path in saved:
        try:
            SimilarityIndex.load(path)
        except IndexFileError as error:
            raise AssertionError(f"torn index after kill -9: {error}") from None


@pytest.mark.parametrize(
    ("operation", "backend"),
    [("bulk import", "faiss"), ("reindex", "faiss"), ("index save", "faiss"), ("bulk import", "milvus"), ("reindex", "milvus")],
)
@pytest.mark.parametrize("trial", range(TRIALS_PER_OPERATION))
def test_kill_9_loses_nothing_acknowledged_and_tears_nothing(operation, backend, trial, tiny_model_dir, tmp_path):
    rng = random.Random(f"{operation}/{trial}")
    backend_settings = {}
    if backend == "milvus":
        require_milvus()
        backend_settings = {"index_backend": "milvus", "milvus_uri": str(tmp_path / "milvus" / "qsim.db")}
    # Saves as often as possible in the "index save" trials, so a kill lands in the middle of one.
    env = service_env(
        tmp_path, tiny_model_dir, index_save_interval_seconds="0.01" if operation == "index save" else "0",
        **backend_settings,
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    acknowledged: list[int] = []
    attempted: list[int] = []
    try:
        with httpx.Client(base_url=service.base, timeout=10) as client:  # something to reindex and save
            for number in range(4):
                assert client.post("/questions/bulk", json={"questions": questions_of(number)}).status_code == 201
                acknowledged.append(number)
                attempted.append(number)
            if operation == "reindex":
                assert client.post("/admin/reindex", headers=service.admin).status_code == 202
        stop = threading.Event()
        thread = threading.Thread(target=writer, args=(service, acknowledged, attempted, stop, 100))
        thread.start()
        time.sleep(rng.uniform(0.05, 1.5))
        service.kill()
        stop.set()
        thread.join()
        assert_saved_index_loads(tmp_path / "index")
        service.start()
        check_after_restart(service, acknowledged, attempted)
    finally:
        service.stop()
