"""Several worker processes, each with its own index, stay consistent through the database's
change log: a write acknowledged by one worker is searchable on every worker, and metrics from
any worker count the requests of all of them."""

from __future__ import annotations

import re

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
