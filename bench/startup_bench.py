"""Startup benchmark: seconds from process start to /readyz 200, with 10k and 100k questions, when the
index must be rebuilt from the database and when the saved index is loaded.

    python -m bench.startup_bench [--sizes 10000 100000] [--model models/default]

The service runs through docker/entrypoint.sh on a SQLite database under bench/out/. The 10k are the
BANKING77 training questions; larger collections repeat them with a distinct suffix per copy, so
every question has its own codes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from bench.banking77 import questions
from bench.http_bench import OUT, ROOT, free_port, start_service, stop_service, wait_ready


def fill_database(url: str, size: int) -> None:
    from app.core.db import open_database
    from app.core.migrations import upgrade_to_head
    from app.questions.importer import import_questions
    from app.questions.repository import NewQuestion

    upgrade_to_head(url)
    database = open_database(url)
    import_questions(database, [NewQuestion(text) for text in questions("train", size)], batch_size=5000)
    database.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        database = OUT / f"startup_{size}.db"
        index_dir = OUT / f"startup_{size}_index"
        for leftover in [*OUT.glob(f"startup_{size}.db*"), index_dir]:
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
        url = f"sqlite:///{database}"
        started = time.perf_counter()
        fill_database(url, size)
        filled = time.perf_counter() - started
        env = {"QSIM_DATABASE_URL": url, "QSIM_INDEX_DIR": str(index_dir), "QSIM_MODEL_DIR": str(args.model),
               "QSIM_LOG_LEVEL": "WARNING", "QSIM_SEED_ON_EMPTY": "false"}
        timings = {}
        for label in ("rebuild from the database", "saved index"):
            port = free_port()
            process = start_service(env, port)
            timings[label] = wait_ready(f"http://127.0.0.1:{port}", process)
            stop_service(process)  # graceful: saves the index for the next round
        rows.append((size, filled, timings))
    print(f"\nqsim startup to ready, model {args.model.name}; machine {platform.machine()}, {os.cpu_count()} CPUs")
    print("\n| questions | rebuild index (s) | load saved index (s) | (database fill, s) |")
    print("|---|---|---|---|")
    for size, filled, timings in rows:
        print(f"| {size:,} | {timings['rebuild from the database']:.1f} | {timings['saved index']:.1f} | {filled:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
