"""Soak: a steady mix of searches, adds, updates and deletes at half the peak measured at the start
of the run (so the rate fits the machine), on the real service process. No errors, memory flat
after warm-up, database and index consistent at the end. CI runs 30 seconds on the tiny model;
`make test-long` (QSIM_LONG_TESTS=1) runs 10 minutes on the shipped default model."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import time

import httpx

from tests.conftest import BANKING77_TRAIN, ROOT
from tests.reliability.service_process import ServiceProcess, service_env

LONG = os.environ.get("QSIM_LONG_TESTS") == "1"
DURATION = 600.0 if LONG else 30.0
WARMUP = 0.2  # share of the run before memory is taken as the baseline


async def peak_search_rate(service: ServiceProcess, texts: list[str], seconds: float = 5.0, workers: int = 16) -> float:
    """Closed-loop searches from `workers` connections: the rate the service sustains flat out."""
    done = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=service.base, timeout=30) as client:

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.monotonic() < deadline:
                await client.post("/questions/similar", json={"question": texts[i % len(texts)]})
                done += 1
                i += workers

        await asyncio.gather(*(worker(k) for k in range(workers)))
    return done / seconds


async def workload(
    service: ServiceProcess, texts: list[str], rng: random.Random, rate: float
) -> tuple[list[str], list[int]]:
    errors: list[str] = []
    rss: list[int] = []
    live: list[int] = []
    deleted: set[int] = set()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=service.base, timeout=10, limits=limits) as client:
        started = time.monotonic()
        sent = 0
        pending: set[asyncio.Task] = set()

        async def one(kind: str) -> None:
            try:
                if kind == "search":
                    response = await client.post("/questions/similar", json={"question": rng.choice(texts)})
                elif kind == "add":
                    response = await client.post("/questions", json={"text": rng.choice(texts) + f" #{rng.random()}"})
                    if response.status_code == 201:
                        live.append(response.json()["id"])
                elif kind == "update" and live:
                    target = rng.choice(live)
                    response = await client.patch(f"/questions/{target}", json={"text": rng.choice(texts)})
                    if response.status_code == 404 and target in deleted:
                        return
                elif kind == "delete" and live:
                    target = live.pop(rng.randrange(len(live)))
                    deleted.add(target)
                    response = await client.delete(f"/questions/{target}")
                else:
                    return
                if response.status_code >= 400:
                    errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            except httpx.HTTPError as error:
                errors.append(f"{kind}: {error!r}")

        while (elapsed := time.monotonic() - started) < DURATION:
            due = int(elapsed * rate)
            while sent < due:
                kind = rng.choices(["search", "add", "update", "delete"], weights=[80, 10, 5, 5])[0]
                task = asyncio.create_task(one(kind))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if int(elapsed) >= len(rss):
                rss.append(service.rss_bytes())
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
    return errors, rss


def test_soak_mixed_load_without_errors_leaks_or_drift(tiny_model_dir, tmp_path):
    texts = [row["text"] for row in csv.DictReader(BANKING77_TRAIN.open())][:3000]
    model_dir = ROOT / "models" / "default" if LONG else tiny_model_dir
    env = service_env(
        tmp_path, model_dir, env="development", seed_on_empty="true", seed_corpus=str(BANKING77_TRAIN),
        index_save_interval_seconds="20",
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        rate = asyncio.run(peak_search_rate(service, texts)) / 2
        errors, rss = asyncio.run(workload(service, texts, random.Random(2026), rate))
        assert errors == [], errors[:10]
        baseline = max(rss[int(len(rss) * WARMUP) : int(len(rss) * WARMUP) + 5])
        assert rss[-1] <= baseline * 1.10 + 30 * 2**20, f"RSS grew from {baseline / 2**20:.0f} to {rss[-1] / 2**20:.0f} MiB"
        with httpx.Client(base_url=service.base, timeout=30) as client:
            ready = client.get("/readyz").json()
            assert ready["status"] == "ready", ready
            total = client.get("/questions").json()["total"]
            assert ready["questions"] == total
    finally:
        service.stop()
