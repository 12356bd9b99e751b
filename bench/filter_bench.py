"""Filtered search benchmark: exact search restricted to the questions a metadata filter keeps,
side by side with the unfiltered search and the brute-force reference over the same subset.

    python -m bench.filter_bench                         # 100k questions, filters keeping 100%, 50%, 10%, 1%, 0.01%
    python -m bench.filter_bench --size 20000 --queries 50

Stored questions: `--size` synthetic questions (bench/synthetic.py, shape 'separated', d = 64,
K = 5, l2). A filter keeping a share s is a seeded random subset of that share (the index only
sees the allowed ids; which metadata produced them does not matter to it). Queries are fresh
questions; the threshold is set so that a median unfiltered query has `--matches` matches. Every
filtered answer is checked against `reference.brute_force_search` over the allowed subset.
Latencies are single queries (nq = 1, limit 10) on one thread; the load average is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from app.search import SimilarityIndex
from app.search.reference import brute_force_search, pair_distances
from bench.synthetic import SHAPES, CodeGenerator

DIM, SAMPLES, LIMIT = 64, 5, 10


def timed(function, repeats: int) -> tuple[list, np.ndarray]:
    results, times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        results.append(function())
        times.append(time.perf_counter() - started)
    return results, np.array(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--matches", type=int, default=20, help="median matches of an unfiltered query")
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.01, 0.0001])
    args = parser.parse_args()
    threadpool_limits(1)
    generator = CodeGenerator(SHAPES["separated"], dim=DIM, samples=SAMPLES, seed=0)
    codes = generator.codes(args.size, stream=1)
    ids = np.arange(1, args.size + 1, dtype=np.int64)
    queries = generator.codes(args.queries, stream=2)
    started = time.perf_counter()
    index = SimilarityIndex(DIM, SAMPLES, "l2", model_id="filterbench", device="cpu", background_merges=False)
    index.add(ids, codes)
    build = time.perf_counter() - started
    # Threshold: the distance at which the median query has `matches` questions (closest pairs).
    sample = codes[np.random.default_rng(3).choice(args.size, min(args.size, 20_000), replace=False)]
    closest = np.sort(np.stack([pair_distances(q, sample, "l2").reshape(len(sample), -1).min(1) for q in queries[:20]]), 1)
    threshold = float(np.median(closest[:, max(0, int(args.matches * len(sample) / args.size) - 1)]))
    print(f"{args.size:,} questions (d={DIM}, K={SAMPLES}, l2), built in {build:.1f} s; threshold {threshold:.4f}; "
          f"{args.queries} single queries, limit {LIMIT}; load average {os.getloadavg()[0]:.1f}")
    print()
    print("| threshold | filter keeps | allowed | filtered p50 ms | filtered p95 ms | unfiltered p50 ms | brute force over the subset p50 ms | results (median) | exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, t in [("tight", threshold), ("inf (rank)", math.inf)]:
        run(index, ids, codes, queries, t, label, args.shares, args.size)


def run(index, ids, codes, queries, threshold, label, shares, size) -> None:
    rng = np.random.default_rng(11)
    for share in shares:
        allowed = ids if share >= 1.0 else np.sort(rng.choice(ids, max(1, round(share * size)), replace=False))
        keep = np.isin(ids, allowed)
        filtered, unfiltered, brute, counts, exact = [], [], [], [], True
        for q in queries:
            found, t = timed(lambda q=q, a=allowed: index.search(q[None], threshold=threshold, limit=LIMIT, allowed=a)[0], 1)
            filtered.append(t[0])
            _, t = timed(lambda q=q: index.search(q[None], threshold=threshold, limit=LIMIT)[0], 1)
            unfiltered.append(t[0])
            if share <= 0.1:  # the reference over a large subset takes seconds per query
                expected, t = timed(
                    lambda q=q, k=keep: brute_force_search(q, ids[k], codes[k], threshold=threshold, limit=LIMIT), 1
                )
                brute.append(t[0])
                exact &= found[0] == expected[0]
            counts.append(len(found[0]))
        brute_p50 = f"{np.median(brute):.2f}" if brute else "(not run)"
        checked = ("yes" if exact else "NO") if brute else "(not checked)"
        print(f"| {label} | {share:.2%} | {len(allowed):,} | {np.median(filtered):.2f} | {np.percentile(filtered, 95):.2f} | "
              f"{np.median(unfiltered):.2f} | {brute_p50} | {int(np.median(counts))} | {checked} |")


if __name__ == "__main__":
    main()
