"""Several worker processes, each with its own index, stay consistent through the database's
change log: a write acknowledged by one worker is searchable on every worker, and metrics from
any worker count the requests of all of them."""

from __future__ import annotations

import re
import time

import httpx

from tests.reliability.service_process import ServiceProcess, service_env


def fresh_connection(service: ServiceProcess) -> httpx.Client:
    """No keep-alive: every request is a new connection, which the kernel hands to either worker."""
    return httpx.Client(base_url=service.base, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def test_two_workers_answer_as_one_service(tiny_model_dir, tmp_path):
    env = service_env(tmp_path, tiny_model_dir, workers="2", metrics_dir=str(tmp_path / "metrics"))
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        with fresh_connection(service) as client:
            created = []
            for i in range(30):
                text = f"multi worker question number {i} about a card refund"
                question = client.post("/questions", json={"text": text}).json()
                response = client.post("/questions/similar", json={"question": text, "threshold": 1e-9})
                assert response.status_code == 200, response.text
                found = response.json()
                assert [r["id"] for r in found["results"]] == [question["id"]], f"write {i} not seen by the next search"
                created.append((question["id"], text))
            for question_id, text in created[:10]:
                assert client.delete(f"/questions/{question_id}").status_code == 204
                found = client.post("/questions/similar", json={"question": text, "threshold": 1e-9}).json()
                assert found["results"] == []
            metrics = "".join(client.get("/metrics").text for _ in range(4))
        pids = set(re.findall(r'qsim_index_questions\{pid="(\d+)"\}', metrics))
        assert len(pids) == 2, "both workers should report their index"
        posted = re.findall(r'qsim_http_requests_total\{method="POST",route="/questions",status="201"\} (\S+)', metrics)
        assert posted and all(float(value) == 30.0 for value in posted), posted
    finally:
        service.stop()


def searches_from_every_worker(client: httpx.Client, text: str, count: int = 40) -> list[dict]:
    return [client.post("/questions/similar", json={"question": text, "threshold": 1e-9}).json() for _ in range(count)]


def test_a_model_switch_reaches_every_worker(tiny_model_dir, other_tiny_model_dir, tiny_encoder, tmp_path):
    """The reindex runs on one worker; when its job says succeeded, every worker answers with the
    new model (its id, and its codes: a stored question is its own exact match everywhere)."""
    env = service_env(tmp_path, tiny_model_dir, workers="2", metrics_dir=str(tmp_path / "metrics"))
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        with fresh_connection(service) as client:
            texts = [f"question {i} about switching a card limit" for i in range(20)]
            ids = [client.post("/questions", json={"text": text}).json()["id"] for text in texts]
            before = searches_from_every_worker(client, texts[3])
            assert {answer["model"]["id"] for answer in before} == {tiny_encoder.model_id}
            job = client.post("/admin/reindex", headers=service.admin, json={"model": other_tiny_model_dir.name})
            assert job.status_code == 202, job.text
            deadline = time.monotonic() + 120
            while (status := client.get(f"/admin/jobs/{job.json()['job_id']}", headers=service.admin).json())["status"] in (
                "queued", "running"
            ):
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
            assert status["status"] == "succeeded", status
            after = searches_from_every_worker(client, texts[3])
            served = {(answer["model"]["name"], answer["model"]["id"]) for answer in after}
            assert served == {("tiny-other", after[0]["model"]["id"])} and after[0]["model"]["id"] != tiny_encoder.model_id
            assert all([r["id"] for r in answer["results"]] == [ids[3]] for answer in after)
            # Writes after the switch are encoded by the new model on every worker.
            added = client.post("/questions", json={"text": "a question stored after the switch"}).json()["id"]
            found = searches_from_every_worker(client, "a question stored after the switch", count=20)
            assert all([r["id"] for r in answer["results"]] == [added] for answer in found)
    finally:
        service.stop()


def test_a_write_wakes_the_other_worker_instead_of_waiting_for_its_poll(tiny_model_dir, tmp_path):
    """With the change-log poll 20 s apart, a write still returns at once and is searchable on both
    workers: it wakes the other worker, which applies it now (without the wake-up, every write
    would wait up to 20 s for the other worker's poll, or give up at the visibility timeout)."""
    env = service_env(
        tmp_path, tiny_model_dir, workers="2", applier_poll_ms="20000", write_visibility_timeout_seconds="30",
        replica_heartbeat_seconds="60", replica_timeout_seconds="120",
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        with fresh_connection(service) as client:
            # Both workers serving before anything is timed (a search on a loading worker waits for it).
            searches_from_every_worker(client, "a warm-up question", count=10)
            for i in range(6):
                text = f"woken worker question {i} about a blocked card"
                started = time.monotonic()
                created = client.post("/questions", json={"text": text})
                took = time.monotonic() - started
                assert created.status_code == 201, created.text
                assert took < 5, f"write {i} took {took:.1f} s: it waited for the other worker's poll"
                for answer in searches_from_every_worker(client, text, count=8):
                    assert [r["id"] for r in answer["results"]] == [created.json()["id"]], f"write {i} not seen"
    finally:
        service.stop()
