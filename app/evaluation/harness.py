"""Times and runs one retriever the same way for qsim and every baseline, in this process.

- encode throughput: all queries encoded in batches of `batch_size`, queries per second;
- per-query latency: one query at a time, encode + rank top-k, on a seeded sample of queries
  (median and 95th percentile), after one warm-up query; at most `latency_queries` queries or
  `latency_seconds` of measuring, whichever comes first, so a slow model does not stall the run;
- ranking: every encoded query ranked against the corpus, top k.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.evaluation.baselines import Retriever


@dataclass
class RetrievalRun:
    name: str
    ranked: list[list[int]]  # per query, corpus indices best first
    fit_seconds: float
    encode_per_second: float
    rank_seconds: float
    latency_ms_p50: float | None  # None when no query was timed alone
    latency_ms_p95: float | None
    latency_queries: int
    encoded: Any = field(default=None, repr=False)  # the encoded queries, for further use

    def timings(self) -> dict[str, float]:
        return {
            "fit_seconds": round(self.fit_seconds, 3),
            "encode_per_second": round(self.encode_per_second, 1),
            "rank_seconds": round(self.rank_seconds, 3),
            "latency_ms_p50": None if self.latency_ms_p50 is None else round(self.latency_ms_p50, 3),
            "latency_ms_p95": None if self.latency_ms_p95 is None else round(self.latency_ms_p95, 3),
            "latency_queries": self.latency_queries,
        }


def run_retriever(
    retriever: Retriever,
    corpus_texts: Sequence[str],
    query_texts: Sequence[str],
    *,
    k: int = 10,
    batch_size: int = 256,
    latency_queries: int = 200,
    latency_seconds: float = 20.0,
    seed: int = 0,
) -> RetrievalRun:
    started = time.perf_counter()
    retriever.fit(corpus_texts)
    fit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    encoded = retriever.encode(query_texts, batch_size=batch_size)
    encode_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ranked = retriever.rank(encoded, k)
    rank_seconds = time.perf_counter() - started

    sample = np.random.default_rng(seed).permutation(len(query_texts))[: max(0, latency_queries)]
    latencies = []
    if len(sample):
        retriever.rank(retriever.encode([query_texts[sample[0]]]), k)  # warm-up
    deadline = time.perf_counter() + latency_seconds
    for i in sample:
        if latencies and time.perf_counter() > deadline:
            break
        started = time.perf_counter()
        retriever.rank(retriever.encode([query_texts[i]]), k)
        latencies.append((time.perf_counter() - started) * 1000.0)
    p50, p95 = (float(x) for x in np.percentile(latencies, [50, 95])) if latencies else (None, None)
    return RetrievalRun(
        name=retriever.name,
        ranked=ranked,
        fit_seconds=fit_seconds,
        encode_per_second=len(query_texts) / max(encode_seconds, 1e-9),
        rank_seconds=rank_seconds,
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        latency_queries=len(latencies),
        encoded=encoded,
    )
