"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

With several workers (`qsim serve --workers N`), PROMETHEUS_MULTIPROC_DIR is set before they start:
each worker writes its values to files there and a scrape of any worker reports all of them
(counters and histograms summed, gauges per worker process).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def forget_dead_workers(directory: str) -> list[int]:
    """Removes the per-worker gauge files of worker processes that no longer run (a worker killed
    and respawned by uvicorn left its `liveall` series in every scrape). Returns their pids."""
    import re
    from pathlib import Path

    dead = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:  # alive, another user's
            pass
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)


class Metrics:
    def __init__(self) -> None:
        directory = os.environ.get(MULTIPROCESS_ENV)
        if directory:
            forget_dead_workers(directory)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qsim_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "qsim_http_request_duration_seconds", "HTTP request latency by route", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        per_worker = {"multiprocess_mode": "liveall"}
        self.index_questions = Gauge("qsim_index_questions", "questions in the live index", registry=r, **per_worker)
        self.index_revision = Gauge(
            "qsim_index_revision", "last database change applied to the index", registry=r, **per_worker
        )
        self.index_pending_changes = Gauge(
            "qsim_index_pending_changes", "database changes the last poll saw that the index has not applied yet",
            registry=r, **per_worker,
        )
        self.lagging_writes = Counter(
            "qsim_lagging_writes", "writes that returned before every live worker's index had applied them "
            "(QSIM_WRITE_VISIBILITY_TIMEOUT_SECONDS)", registry=r,
        )
        self.index_backend = Gauge(
            "qsim_index_backend", "where the codes live (QSIM_INDEX_BACKEND)", ["backend"], registry=r, **per_worker
        )
        self.milvus_events = Gauge(
            "qsim_milvus_events", "Milvus backend events since start: searches, engine_searches, truncated (an "
            "answer at the requested limit, asked again), split_requests (paging past the top-k cap), scans (exact "
            "fallback), subset_reads, fetched_questions", ["event"], registry=r, **per_worker,
        )
        self.model_info = Gauge(
            "qsim_model_info", "the model serving searches", ["name", "model_id"], registry=r, **per_worker
        )
        self.reindex_jobs = Counter("qsim_reindex_jobs", "finished reindex jobs by outcome", ["status"], registry=r)
        self.search_batch_size = Histogram(
            "qsim_search_batch_size", "questions answered together by the micro-batcher",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.search_queue_depth = Gauge(
            "qsim_search_queue_depth", "questions waiting for the search executor", registry=r, multiprocess_mode="livesum"
        )
        self.feedback = Counter(
            "qsim_feedback", "agents' verdicts recorded through POST /feedback", ["verdict"], registry=r
        )
        self.overloaded = Counter(
            "qsim_overloaded_requests", "requests refused with 503 because the search queue was full", registry=r
        )

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
