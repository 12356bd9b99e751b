"""Cluster jobs: the similarity graph of the live index (optionally of the questions a metadata
filter keeps), leader-clustered, the result stored with the job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from app.admin.models import Job
from app.admin.service import JobManager
from app.clusters.clustering import leader_clusters, similarity_graph
from app.clusters.models import ClusterResult
from app.core.db import Database
from app.core.errors import ConflictError, NotFoundError
from app.questions.models import utcnow
from app.similarity.catalog import InvalidFilter
from app.similarity.search_service import InvalidQuery
from app.similarity.state import SearchState

KIND = "clusters"


class ClusterJobNotFound(NotFoundError):
    def __init__(self, job_id: str, other_kind: str | None = None):
        if other_kind is None:
            super().__init__(f"cluster job {job_id} does not exist")
        else:
            super().__init__(f"job {job_id} is a {other_kind} job, not a cluster job: its status is at GET /admin/jobs/{job_id}")


class ClustersNotReady(ConflictError, RuntimeError):
    """The job exists but has not succeeded (yet); the 409 names it (`job_id`) and says its state."""

    def __init__(self, job: Job):
        message = f"cluster job {job.id} has status {job.status}"
        if job.status == "failed" and job.error:
            message += f": {job.error}"
        super().__init__(message)
        self.job_id = job.id

    def extra(self) -> dict[str, str]:
        return {"job_id": self.job_id}


def cluster_state(
    state: SearchState, threshold: float | None, min_pairs: int | None, where: dict[str, Any] | None,
    progress: Callable[[float], None] | None = None,
) -> dict:
    """The clusters of the questions of `state` (those passing `where`) as the API returns them."""
    encoder = state.encoder
    threshold = encoder.default_threshold if threshold is None else threshold
    min_pairs = encoder.default_min_pairs if min_pairs is None else min_pairs
    pairs = encoder.samples_per_question**2
    if not 1 <= min_pairs <= pairs:
        raise InvalidQuery(f"min_pairs must be between 1 and {pairs}", field="min_pairs")
    try:
        ids = state.catalog.allowed(where) if where else state.index.ids()
    except InvalidFilter as error:
        raise InvalidQuery(str(error), field="filter") from None
    graph = similarity_graph(state.index, ids, threshold=threshold, min_pairs=min_pairs, progress=progress)
    clusters = leader_clusters(graph)

    def question(qid: int) -> dict:
        entry = state.catalog.get(qid)
        return {"id": qid, "text": entry.text if entry else None}

    grouped = [c for c in clusters if len(c.members) > 1]
    return {
        "threshold": threshold,
        "min_pairs": min_pairs,
        "model": encoder.name,
        "model_id": encoder.model_id,
        "questions": int(len(graph.ids)),
        "clusters": [
            {"size": len(c.members), "representative": question(c.representative),
             "members": [question(qid) for qid in c.members]}
            for c in grouped
        ],
        "singletons": len(clusters) - len(grouped),
    }


class ClusterService:
    def __init__(self, database: Database, live_state: Callable[[], SearchState], jobs: JobManager):
        self.db = database
        self._live_state = live_state
        self.jobs = jobs

    def start(self, threshold: float | None, min_pairs: int | None, where: dict[str, Any] | None) -> Job:
        state = self._live_state()  # NotReady (503) while loading
        # Fail bad parameters now (422), not in the job.
        encoder = state.encoder
        pairs = encoder.samples_per_question**2
        if min_pairs is not None and not 1 <= min_pairs <= pairs:
            raise InvalidQuery(f"min_pairs must be between 1 and {pairs}", field="min_pairs")

        def work(progress) -> dict:
            return cluster_state(self._live_state(), threshold, min_pairs, where, progress)

        return self.jobs.start(KIND, work, on_success=self._store)

    def _store(self, job_id: str, result: dict) -> None:
        with self.db.writing() as session:
            session.add(ClusterResult(job_id=job_id, result=result, created_at=utcnow()))

    def result(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None or job.kind != KIND:
            raise ClusterJobNotFound(job_id, None if job is None else job.kind)
        with self.db.reading() as session:
            row = session.get(ClusterResult, job_id)
        if row is None:
            raise ClustersNotReady(job)
        return row.result


def write_clusters_csv(result: dict, out, include_singletons: bool = False, state: SearchState | None = None) -> int:
    """clusters.csv: one row per member (cluster number, size, representative id, id, text)."""
    import csv
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cluster", "size", "representative_id", "id", "text"])
        for number, cluster in enumerate(result["clusters"], start=1):
            for member in cluster["members"]:
                writer.writerow([number, cluster["size"], cluster["representative"]["id"], member["id"], member["text"]])
                rows += 1
        if include_singletons and state is not None:
            grouped = {m["id"] for c in result["clusters"] for m in c["members"]}
            number = len(result["clusters"])
            for qid in np.setdiff1d(state.index.ids(), np.fromiter(grouped, dtype=np.int64, count=len(grouped))).tolist():
                number += 1
                entry = state.catalog.get(qid)
                writer.writerow([number, 1, qid, qid, entry.text if entry else ""])
                rows += 1
    return rows
