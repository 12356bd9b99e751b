"""The exact index with codes from a real model rather than synthetic ones.

    python -m bench.model_index_bench [--model models/default] [--sizes 10000 100000] [--queries 200]

Stored questions are the BANKING77 training questions, repeated with a distinct suffix per copy
beyond 10,003 (so every question has its own codes); queries are the test questions. Searches use
the model's calibrated rule (threshold and min_pairs) and limit 10, one query at a time (p50/p99)
and in batches of 16 (what the service's micro-batcher forms under load). Encoding is not timed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.banking77 import questions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    from app.model.encoder import QuestionEncoder
    from app.search import SimilarityIndex

    threadpool_limits(1, user_api="blas")
    encoder = QuestionEncoder.load(args.model)
    threshold, min_pairs = encoder.default_threshold, encoder.default_min_pairs
    queries = encoder.sample(questions("test")[: args.queries])
    print(
        f"model {encoder.name} ({encoder.model_id}), {encoder.metric}, d={encoder.latent_dim}, K={encoder.samples_per_question}; "
        f"rule: {min_pairs} of {encoder.samples_per_question ** 2} pairs within t={threshold:.4f}; load average "
        f"{os.getloadavg()[0]:.1f}; one torch and BLAS thread"
    )
    print("\n| questions | encode s | build s | single p50 ms | single p99 ms | batched q/s | matches per query (median) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        started = time.perf_counter()
        codes = encoder.sample(questions("train", size))
        encoded = time.perf_counter() - started
        index = SimilarityIndex(
            encoder.latent_dim, encoder.samples_per_question, metric=encoder.metric, model_id=encoder.model_id,
            background_merges=False,
        )
        started = time.perf_counter()
        index.add(np.arange(1, size + 1, dtype=np.int64), codes)
        built = time.perf_counter() - started
        index.search(queries[:4], threshold=threshold, min_pairs=min_pairs, limit=10)
        timings, matches = [], []
        for query in queries:
            started = time.perf_counter()
            index.search(query[None], threshold=threshold, min_pairs=min_pairs, limit=10)
            timings.append((time.perf_counter() - started) * 1000)
        for query in queries[:20]:
            matches.append(len(index.search(query[None], threshold=threshold, min_pairs=min_pairs, limit=10**9)[0]))
        started = time.perf_counter()
        for start in range(0, len(queries), args.batch):
            index.search(queries[start : start + args.batch], threshold=threshold, min_pairs=min_pairs, limit=10)
        batched = len(queries) / (time.perf_counter() - started)
        print(
            f"| {size:,} | {encoded:.1f} | {built:.1f} | {np.percentile(timings, 50):.2f} | {np.percentile(timings, 99):.2f} | "
            f"{batched:,.0f} | {int(np.median(matches))} |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
