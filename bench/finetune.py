"""Fine-tuning the shipped default on a small desk log (`qsim train --init`), against the untouched
default and against training from scratch on the same log (models/README.md).

    python -m bench.finetune [--model models/default] [--log-size 300] [--epochs 3]

The desk is SNIPS (data/snips), a domain the default never saw: its log is the first --log-size
stored requests, text only (no intents). Each model is measured on the 1,000 SNIPS queries against
the 3,000 stored requests (relevant = same intent), beside BM25 and MiniLM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.model.artifact import load_artifact  # noqa: E402
from app.model.config import ModelSettings  # noqa: E402
from app.model.data import Corpus, read_corpus  # noqa: E402
from app.model.train import Trainer  # noqa: E402
from bench.recipes import SNIPS_STORED, measure_baselines, measure_model, split_snips  # noqa: E402

OUT = ROOT / "bench" / "out" / "finetune"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--log-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    stored = read_corpus(SNIPS_STORED, "text")
    log = Corpus(stored.texts[: args.log_size], path=f"{SNIPS_STORED} (first {args.log_size})", sha256="snips-log",
                 text_column="text")
    sets = {"SNIPS": split_snips()}
    rows = [(name, metrics, None) for (_, name), metrics in measure_baselines(sets).items()]
    for (_, variant), metrics in measure_model(args.model, sets).items():
        rows.append((f"untouched default [{variant}]", metrics, None))
    for name, init in (("fine-tuned from the default", load_artifact(args.model)), ("trained from scratch", None)):
        settings = ModelSettings()
        settings.training.epochs = args.epochs
        out = OUT / name.split()[0]
        started = time.perf_counter()
        Trainer(log, out, settings, seed=13, progress=False, log=lambda line, n=name: print(f"  [{n}] {line}", flush=True),
                init=init).run()
        seconds = time.perf_counter() - started
        for (_, variant), metrics in measure_model(out, sets).items():
            rows.append((f"{name} [{variant}]", metrics, seconds))
    print(f"\nSNIPS: desk log of {args.log_size} requests (text only), {args.epochs} epochs")
    print("| model | P@1 | MAP@10 | train s |\n|---|---|---|---|")
    for name, metrics, seconds in rows:
        print(f"| {name} | {metrics.precision_at_1:.3f} | {metrics.map_at_10:.3f} | {'' if seconds is None else f'{seconds:.0f}'} |")


if __name__ == "__main__":
    main()
