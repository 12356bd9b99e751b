"""Latent index benchmark: build time, memory, latency, throughput and recall, printed as a table.

    python -m bench.index_bench                                  # 10k, 100k, 1M; every kind; both shapes
    python -m bench.index_bench --sizes 10k,100k --kinds exact   # a quick run

For each code shape (bench/synthetic.py) and collection size: questions with K=5 codes of d=128 are
indexed in one batch; queries are fresh questions of the same shape. The threshold is calibrated on
the exact index so that a median query has `--matches` matches (tight) or `--loose-matches` (loose).
Latencies are single queries (nq=1, limit 10); throughput is batches of `--batch` queries. Recall of
an approximate kind is the share of the exact top-10 it returns (at the tight threshold, and for
the infinite-threshold ranking). Exact results are checked against an independent path (FAISS flat
range search + the float64 reference) for a few queries. Timings on a shared machine are noisy: the
load average is printed with the table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass

import faiss
import numpy as np

from app.search import KINDS, SimilarityIndex
from app.search.accelerator import visible_gpus
from app.search.reference import brute_force_search, order_matches
from bench.synthetic import SHAPES, CodeGenerator

DIM = 128
SAMPLES = 5
LIMIT = 10


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def label(size: int) -> str:
    return f"{size // 1_000_000}M" if size % 1_000_000 == 0 else f"{size // 1000}k" if size % 1000 == 0 else str(size)


@dataclass
class Row:
    shape: str
    size: int
    kind: str
    build_s: float = math.nan
    bytes_per_question: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    loose_p50_ms: float = math.nan
    rank_p50_ms: float = math.nan
    batched_qps: float = math.nan
    matches: str = ""
    recall: str = ""
    note: str = ""


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def latencies(index: SimilarityIndex, queries: np.ndarray, threshold: float) -> np.ndarray:
    return np.array([timed(lambda q=q: index.search(q[None], threshold=threshold, limit=LIMIT)) for q in queries])


def batched_qps(index: SimilarityIndex, queries: np.ndarray, threshold: float, batch: int) -> float:
    elapsed = sum(
        timed(lambda s=s: index.search(queries[s : s + batch], threshold=threshold, limit=LIMIT))
        for s in range(0, len(queries), batch)
    )
    return len(queries) / elapsed


def calibrate(index: SimilarityIndex, queries: np.ndarray, tight: int, loose: int) -> tuple[float, float]:
    """Thresholds at which the median query has `tight` and `loose` matches (min_pairs = 1)."""
    ranked = index.search(queries, threshold=math.inf, limit=loose)
    distances = np.array([[m.distance for m in result] for result in ranked])
    return float(np.median(distances[:, tight - 1])), float(np.median(distances[:, loose - 1]))


def independent_check(ids, codes, queries, threshold: float, index: SimilarityIndex) -> bool:
    """FAISS flat range search (float32, radius widened by 1e-3) proposes, the reference decides."""
    flat = faiss.IndexFlatL2(DIM)
    flat.add(codes.reshape(-1, DIM))
    for query in queries:
        _, _, labels = flat.range_search(query, (threshold * (1 + 1e-3) + 1e-3) ** 2)
        rows = np.unique(labels // SAMPLES)
        want = order_matches(brute_force_search(query, ids[rows], codes[rows], threshold=threshold, limit=10**9), LIMIT)
        if index.search(query[None], threshold=threshold, limit=LIMIT)[0] != want:
            return False
    return True


def write_latencies(index: SimilarityIndex, ids: np.ndarray, generator: CodeGenerator, count: int = 50) -> str:
    """Single-question writes against the full index (background merges on, as in the service)."""
    fresh = generator.codes(count, stream=3)
    upserts = [timed(lambda i=i: index.add(ids[i : i + 1], fresh[i : i + 1])) for i in range(count)]
    removes = [timed(lambda i=i: index.remove(ids[count + i : count + i + 1])) for i in range(count)]
    index.wait_for_merges()
    return (
        f"replace 1 question p50 {np.median(upserts) * 1e3:.2f} ms (max {max(upserts) * 1e3:.1f}), "
        f"remove 1 p50 {np.median(removes) * 1e3:.2f} ms (max {max(removes) * 1e3:.1f}), "
        f"{index.segment_count} segments after"
    )


def recall(got: list, want: list) -> float:
    wanted = sum(len(w) for w in want)
    hits = sum(len({m.id for m in g} & {m.id for m in w}) for g, w in zip(got, want, strict=True))
    return hits / wanted if wanted else 1.0


def run_size(shape_name: str, size: int, kinds: list[str], args) -> list[Row]:
    generator = CodeGenerator(SHAPES[shape_name], DIM, SAMPLES, seed=args.seed)
    codes = generator.codes(size, stream=1)
    ids = np.arange(size, dtype=np.int64) * 7 + 3
    queries = generator.codes(args.queries, stream=2)
    rows, exact = [], None
    thresholds = None
    for kind in ["exact"] + [k for k in kinds if k != "exact"]:
        if kind != "exact" and size > args.approximate_max:
            row = Row(shape_name, size, kind, note=f"skipped (sizes above --approximate-max {label(args.approximate_max)})")
            rows.append(row)
            print(format_row(row), flush=True)
            continue
        row = Row(shape_name, size, kind)
        options = {"strategy": args.strategy} if kind == "exact" else {}
        if args.strategy == "legacy-blocks" and kind == "exact":
            options |= {"block_questions": 48, "group_factor": 1}  # the partition it was designed with
        index = SimilarityIndex(
            DIM, SAMPLES, "l2", kind, device=args.device, model_id="benchmark", approximate_min_questions=1, **options
        )
        row.build_s = timed(lambda index=index: index.add(ids, codes))
        row.bytes_per_question = index.memory_bytes() / size
        if kind == "exact":
            thresholds = calibrate(index, queries[: args.calibration_queries], args.matches, args.loose_matches)
            exact = index
        tight, loose = thresholds
        index.search(queries[:3], threshold=tight, limit=LIMIT)  # warm-up
        single = latencies(index, queries, tight)
        row.p50_ms, row.p99_ms = np.median(single) * 1e3, np.percentile(single, 99) * 1e3
        row.loose_p50_ms = np.median(latencies(index, queries[: args.queries // 2], loose)) * 1e3
        row.rank_p50_ms = np.median(latencies(index, queries[: args.queries // 2], math.inf)) * 1e3
        row.batched_qps = batched_qps(index, queries, tight, args.batch)
        sample = queries[: args.calibration_queries]
        if kind == "exact":
            counts = [
                np.median([len(r) for r in index.search(sample, threshold=t, limit=10**9)]) for t in (tight, loose)
            ]
            row.matches = f"{counts[0]:.0f} / {counts[1]:.0f}"
            if size <= args.check_max:
                row.note = "checked" if independent_check(ids, codes, queries[: args.check], tight, index) else "CHECK FAILED"
        else:
            at_t = recall(index.search(sample, threshold=tight, limit=LIMIT), exact.search(sample, threshold=tight, limit=LIMIT))
            ranked = recall(index.search(sample, threshold=math.inf, limit=LIMIT), exact.search(sample, threshold=math.inf, limit=LIMIT))
            row.recall = f"{at_t:.3f} / {ranked:.3f}"
        rows.append(row)
        print(format_row(row), flush=True)
        if kind != "exact":
            del index
    print(f"  thresholds for {shape_name} {label(size)}: tight t={thresholds[0]:.4f}, loose t={thresholds[1]:.4f}", flush=True)
    # Last: these writes change the exact index the approximate kinds were compared with.
    print(f"  writes on the exact {label(size)} index: {write_latencies(exact, ids, generator)}", flush=True)
    return rows


HEADER = (
    "| shape | questions | kind | build s | bytes/question | p50 ms | p99 ms | loose p50 ms | rank p50 ms "
    "| batched q/s | matches tight / loose | recall@10 t / rank | note |"
)


def format_row(row: Row) -> str:
    def number(value: float, digits: int = 1) -> str:
        return "-" if math.isnan(value) else f"{value:,.{digits}f}"

    return (
        f"| {row.shape} | {label(row.size)} | {row.kind} | {number(row.build_s)} | {number(row.bytes_per_question, 0)} "
        f"| {number(row.p50_ms, 2)} | {number(row.p99_ms, 2)} | {number(row.loose_p50_ms, 2)} | {number(row.rank_p50_ms, 2)} "
        f"| {number(row.batched_qps, 0)} | {row.matches or '-'} | {row.recall or '-'} | {row.note} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated question counts (10k, 100k, 1M, ...)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    parser.add_argument("--shapes", default="separated,provisional", help=f"code shapes: {', '.join(SHAPES)}")
    parser.add_argument("--queries", type=int, default=200, help="queries timed one by one (and in batches)")
    parser.add_argument("--batch", type=int, default=64, help="queries per batched call")
    parser.add_argument("--matches", type=int, default=20, help="median matches per query at the tight threshold")
    parser.add_argument("--loose-matches", type=int, default=200, help="median matches at the loose threshold")
    parser.add_argument("--calibration-queries", type=int, default=20)
    parser.add_argument("--check", type=int, default=5, help="queries checked against an independent exact path")
    parser.add_argument("--check-max", type=parse_size, default=parse_size("100k"), help="largest size checked")
    parser.add_argument(
        "--approximate-max", type=parse_size, default=parse_size("100k"),
        help="largest size for approximate kinds (an HNSW build of 5M samples takes hours on 2 cores)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--strategy", default="auto", choices=["auto", "blocks", "knn", "legacy-blocks"],
        help="how the exact kind finds candidates ('legacy-blocks': the previous block search and partition, for A/B)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")
    print(f"# latent index benchmark: K={SAMPLES}, d={DIM}, limit={LIMIT}, min_pairs=1")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, GPUs visible to FAISS: "
          f"{visible_gpus()}, faiss {faiss.__version__}, load average at start {os.getloadavg()[0]:.1f}")
    for name in args.shapes.split(","):
        print(f"# shape {SHAPES[name].describe()}")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for name in args.shapes.split(","):
        for size in sizes:
            run_size(name, size, kinds, args)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
