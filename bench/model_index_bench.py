"""The exact index with codes from a real model rather than synthetic ones.

    python -m bench.model_index_bench [--model models/default] [--sizes 10000 100000] [--queries 200]
    python -m bench.model_index_bench --strategies blocks          # only the current search
    python -m bench.model_index_bench --cache var/bench-codes       # keep the encoded codes between runs
    python -m bench.model_index_bench --threshold 0.15 --min-pairs 5   # another rule than the calibrated one

Stored questions are the BANKING77 training questions, repeated with a distinct suffix per copy
beyond 10,003 (so every question has its own codes); queries are the test questions. Searches use
the model's calibrated rule (threshold and min_pairs) and limit 10, one query at a time (p50/p99)
and in batches of 16 (what the service's micro-batcher forms under load). Encoding is not timed.

Each strategy gets its own index over the same codes: 'blocks' (the default: cap bounds, the
pairs rule's count pruning, question caps) and 'legacy-blocks' (the previous search with the
previous partition: 48 questions per block, sqrt(blocks) groups, ball bounds), so that a before /
after comparison is one run on one machine state. Single queries alternate between the strategies
query by query, batches batch by batch, and every answer is checked to be the same.
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
# The partition each strategy was designed with (the legacy search ran on 48-question blocks).
STRATEGY_OPTIONS = {
    "blocks": {},
    "legacy-blocks": {"block_questions": 48, "group_factor": 1},
    "knn": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--strategies", default="legacy-blocks,blocks", help="comma-separated: blocks, legacy-blocks, knn")
    parser.add_argument("--cache", type=Path, default=None, help="directory to keep encoded codes in (keyed by model id)")
    parser.add_argument("--threshold", type=float, default=None, help="the rule's t (default: the model's calibrated one)")
    parser.add_argument("--min-pairs", type=int, default=None, help="the rule's min_pairs (default: the model's)")
    args = parser.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",")]
    unknown = set(strategies) - set(STRATEGY_OPTIONS)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}")

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    from app.model.encoder import QuestionEncoder
    from app.search import SimilarityIndex

    threadpool_limits(1, user_api="blas")
    encoder = QuestionEncoder.load(args.model)
    threshold = encoder.default_threshold if args.threshold is None else args.threshold
    min_pairs = encoder.default_min_pairs if args.min_pairs is None else args.min_pairs

    def encoded(split: str, size: int | None) -> tuple[np.ndarray, float]:
        path = args.cache / f"{encoder.model_id}-{split}-{size or args.queries}.npy" if args.cache else None
        if path is not None and path.exists():
            return np.load(path), float("nan")
        started = time.perf_counter()
        texts = questions(split, size) if size else questions(split)[: args.queries]
        codes = encoder.sample(texts)
        seconds = time.perf_counter() - started
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, codes)
        return codes, seconds

    queries, _ = encoded("test", None)
    queries = queries[: args.queries]
    print(
        f"model {encoder.name} ({encoder.model_id}), {encoder.metric}, d={encoder.latent_dim}, K={encoder.samples_per_question}; "
        f"rule: {min_pairs} of {encoder.samples_per_question ** 2} pairs within t={threshold:.4f}"
        f"{'' if args.threshold is None and args.min_pairs is None else ' (not the calibrated one)'}; load average "
        f"{os.getloadavg()[0]:.1f}; one torch and BLAS thread"
    )
    print(
        "\n| questions | strategy | encode s | build s | bytes/question | single p50 ms | single p99 ms "
        "| batched q/s | matches per query (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        codes, encode_s = encoded("train", size)
        ids = np.arange(1, size + 1, dtype=np.int64)
        indexes, builds = {}, {}
        for strategy in strategies:
            index = SimilarityIndex(
                encoder.latent_dim, encoder.samples_per_question, metric=encoder.metric, model_id=encoder.model_id,
                background_merges=False, strategy=strategy, **STRATEGY_OPTIONS[strategy],
            )
            started = time.perf_counter()
            index.add(ids, codes)
            builds[strategy] = time.perf_counter() - started
            index.search(queries[:4], threshold=threshold, min_pairs=min_pairs, limit=10)
            indexes[strategy] = index
        timings = {s: [] for s in strategies}
        for query in queries:
            answers = []
            for strategy, index in indexes.items():
                started = time.perf_counter()
                answers.append(index.search(query[None], threshold=threshold, min_pairs=min_pairs, limit=10))
                timings[strategy].append((time.perf_counter() - started) * 1000)
            assert all(answer == answers[0] for answer in answers), "strategies disagree"
        first = indexes[strategies[0]]
        matches = [len(first.search(q[None], threshold=threshold, min_pairs=min_pairs, limit=10**9)[0]) for q in queries[:20]]
        batched = dict.fromkeys(strategies, 0.0)
        for start in range(0, len(queries), args.batch):
            for strategy, index in indexes.items():
                started = time.perf_counter()
                index.search(queries[start : start + args.batch], threshold=threshold, min_pairs=min_pairs, limit=10)
                batched[strategy] += time.perf_counter() - started
        for strategy in strategies:
            print(
                f"| {size:,} | {strategy} | {'cached' if np.isnan(encode_s) else f'{encode_s:.1f}'} | {builds[strategy]:.1f} | "
                f"{indexes[strategy].memory_bytes() / size:,.0f} | {np.percentile(timings[strategy], 50):.2f} | "
                f"{np.percentile(timings[strategy], 99):.2f} | {len(queries) / batched[strategy]:,.0f} | "
                f"{int(np.median(matches))} |"
            )
        del indexes
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
