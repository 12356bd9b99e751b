"""The Milvus backend (embedded milvus-lite) beside the FAISS-backed SimilarityIndex: same codes, same
queries, same rule, answers checked equal.

    python -m bench.milvus_bench                          # 100k questions, the shipped model's codes
    python -m bench.milvus_bench --sizes 10000 100000 --queries 50
    python -m bench.milvus_bench --codes synthetic        # vMF-like unit codes, no encoding

Codes: `model` (default) encodes the BANKING77 training questions with the shipped model (cosine,
d = 128, K = 5), repeated with a distinct suffix per copy beyond 10,003 (bench/banking77.py);
queries are the test questions; the rule is the model's calibrated one (threshold, min_pairs).
Encoded codes are cached under --cache. `synthetic` draws intent directions on the sphere and codes
around them (unit vectors), the calibrated rule unchanged.

Per backend and size: build (FAISS: one `add`; Milvus: create the collection, upsert every sample,
flush), single-query p50/p99 (limit 10), batched throughput (--batch queries per call), median
matches per query, the Milvus engine requests per query, and whether both answers agree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def model_codes(model: Path, size: int, queries: int, cache: Path):
    from app.model.encoder import QuestionEncoder
    from bench.banking77 import questions

    encoder = QuestionEncoder.load(model)
    rule = (encoder.default_threshold, encoder.default_min_pairs, encoder.metric, encoder.model_id)
    path = cache / f"codes-{encoder.model_id}-{size}-{queries}.npz"
    if path.exists():
        stored = np.load(path)
        return stored["codes"], stored["queries"], rule
    started = time.perf_counter()
    codes = encoder.sample(questions("train", size))
    query_codes = encoder.sample(questions("test")[:queries])
    print(f"encoded {size:,} questions in {time.perf_counter() - started:.0f} s (cached in {path})")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, codes=codes, queries=query_codes)
    return codes, query_codes, rule


def synthetic_codes(size: int, queries: int, threshold: float, min_pairs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    dim, k = 128, 5
    intents = rng.standard_normal((77 * 8, dim))
    intents /= np.linalg.norm(intents, axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        centre = intents[rng.integers(0, len(intents), n)]
        mean = centre + rng.standard_normal((n, dim)) * 0.03
        codes = mean[:, None, :] + rng.standard_normal((n, k, dim)) * 0.02
        return (codes / np.linalg.norm(codes, axis=-1, keepdims=True)).astype(np.float32)

    return draw(size), draw(queries), (threshold, min_pairs, "cosine", "synthetic0000000")


def percentiles(timings: list[float]) -> tuple[float, float]:
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99))


def run_backend(name: str, index, build, queries: np.ndarray, threshold: float, min_pairs: int, batch: int,
                count_matches: bool = True):
    started = time.perf_counter()
    build()
    built = time.perf_counter() - started
    index.search(queries[:1], threshold=threshold, min_pairs=min_pairs, limit=10)  # warm
    answers, timings = [], []
    for query in queries:
        started = time.perf_counter()
        answers.append(index.search(query[None], threshold=threshold, min_pairs=min_pairs, limit=10)[0])
        timings.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start : start + batch], threshold=threshold, min_pairs=min_pairs, limit=10)
    throughput = len(queries) / (time.perf_counter() - started)
    matches = [-1]
    if count_matches:
        matches = [len(m) for m in index.search(queries[:10], threshold=threshold, min_pairs=min_pairs, limit=10**6)]
    p50, p99 = percentiles(timings)
    return {"backend": name, "build_s": built, "p50_ms": p50, "p99_ms": p99, "qps": throughput,
            "matches": int(np.median(matches)), "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--milvus-queries", type=int, default=10,
                        help="the first N queries only for milvus-lite (seconds per query at 100k)")
    parser.add_argument("--codes", choices=["model", "synthetic"], default="model")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "bench-cache")
    parser.add_argument("--backends", default="faiss,milvus")
    parser.add_argument("--first-limit", type=int, default=256, help="MilvusIndex first_limit")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from app.search import SimilarityIndex
    from app.search.milvus import MilvusIndex

    torch.set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    backends = args.backends.split(",")
    print(f"load average {os.getloadavg()[0]:.1f}; one torch and BLAS thread; limit 10; batches of {args.batch}")
    print("\n| questions | backend | build s | single p50 ms | single p99 ms | batched q/s | matches per query (median) | engine requests per query | same answers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        if args.codes == "model":
            codes, queries, (threshold, min_pairs, metric, model_id) = model_codes(args.model, size, args.queries, args.cache)
        else:
            from app.model.encoder import QuestionEncoder

            encoder = QuestionEncoder.load(args.model)
            codes, queries, (threshold, min_pairs, metric, model_id) = synthetic_codes(
                size, args.queries, encoder.default_threshold, encoder.default_min_pairs
            )
        ids = np.arange(1, size + 1, dtype=np.int64)
        dim, k = codes.shape[2], codes.shape[1]
        rows = []
        if "faiss" in backends:
            index = SimilarityIndex(dim, k, metric=metric, model_id=model_id, device="cpu", background_merges=False)
            rows.append(run_backend("FAISS (SimilarityIndex)", index, lambda i=index, ids=ids, codes=codes: i.add(ids, codes), queries,
                                    threshold, min_pairs, args.batch))
        if "milvus" in backends:
            folder = Path(tempfile.mkdtemp(prefix="qsim-milvus-bench-"))
            index = MilvusIndex(str(folder / "bench.db"), "bench", dim, k, metric, model_id, first_limit=args.first_limit)

            def build(i=index, ids=ids, codes=codes, size=size):
                for start in range(0, size, 10_000):
                    i.add(ids[start : start + 10_000], codes[start : start + 10_000])
                i.save()

            row = run_backend("milvus-lite (MilvusIndex)", index, build, queries[: args.milvus_queries], threshold,
                              min_pairs, args.batch, count_matches=False)
            counters = index.counters.as_dict()
            row["requests"] = counters["engine_searches"] / max(counters["searches"], 1)
            row["counters"] = counters
            rows.append(row)
            index.close()
            shutil.rmtree(folder, ignore_errors=True)
        reference = rows[0]["answers"]
        for row in rows:
            same = row["answers"] == reference[: len(row["answers"])]
            print(
                f"| {size:,} | {row['backend']} | {row['build_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{row['qps']:,.1f} | {row['matches'] if row['matches'] >= 0 else '(same)'} | "
                f"{row.get('requests', float('nan')):.1f} | {'yes' if same else 'NO'} ({len(row['answers'])} queries) |"
            )
        for row in rows:
            if "counters" in row:
                print(f"\n{row['backend']} counters at {size:,}: {row['counters']}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
