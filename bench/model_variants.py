"""Compares encoder and latent variants, and a plain autoencoder, on one table (models/README.md).

    python -m bench.model_variants [--epochs 4] [--labels] [--only bilstm-vmf ...]

Each variant is trained with `qsim train` on the BANKING77 training questions (qsim train's default
settings, with the variant's overrides) and measured with `qsim evaluate --held-out`: the
trainer's own validation rows are the queries and the rest the stored questions, so nothing here
looks at the test set. Runs are shortened (--epochs) so the whole table fits in minutes; the
figures compare variants with each other, not with the fully trained default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "variants"

# name -> (description, architecture overrides, training overrides)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "bilstm-gaussian": ("BiLSTM, Gaussian latent (the original design)", {"encoder": "bilstm", "latent": "gaussian"}, {}),
    "bilstm-vmf": ("BiLSTM, vMF latent", {"encoder": "bilstm", "latent": "vmf"}, {}),
    "lstm-vmf": ("LSTM, vMF latent", {"encoder": "lstm", "latent": "vmf"}, {}),
    "gru-vmf": ("GRU, vMF latent", {"encoder": "gru", "latent": "vmf"}, {}),
    "bigru-vmf": ("BiGRU, vMF latent", {"encoder": "bigru", "latent": "vmf"}, {}),
    "bow-vmf": ("bag of subwords, vMF latent", {"encoder": "bow", "latent": "vmf"}, {}),
    "bilstm-vmf-teacher": (
        "BiLSTM, vMF latent, MiniLM teacher (relational distillation)",
        {"encoder": "bilstm", "latent": "vmf"},
        {"teacher": "minilm", "teacher_weight": 10.0},
    ),
    "bilstm-ae": (
        "BiLSTM plain autoencoder (Gaussian head, no KL term)",
        {"encoder": "bilstm", "latent": "gaussian"},
        {"beta": 0.0, "free_bits": 0.0, "kl_schedule": "constant"},
    ),
}


def run(command: list[str], log: Path) -> None:
    with log.open("w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="base settings (default: qsim train's own defaults, the recipe)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--labels", action="store_true", help="train with the category labels (the default model does)")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run (default: all)")
    args = parser.parse_args()

    from app.model.config import ModelSettings

    base = json.loads(args.config.read_text()) if args.config else ModelSettings().model_dump(exclude={"search"})
    qsim = str(Path(sys.executable).with_name("qsim"))
    rows = []
    for name in args.only or VARIANTS:
        description, architecture, training = VARIANTS[name]
        config = json.loads(json.dumps(base))
        config.setdefault("architecture", {}).update(architecture)
        config.setdefault("training", {}).update(training | {"epochs": args.epochs})
        if not args.labels:
            config["training"]["label_weight"] = 0.0
        out = OUT / ("labels" if args.labels else "text") / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text(json.dumps(config, indent=2))
        started = time.perf_counter()
        train = [qsim, "train", "--corpus", "data/banking77/train.csv", "--text-column", "text",
                 "--config", str(out / "train.json"), "--out", str(out / "model"), "--seed", "13", "--no-progress", "--overwrite"]
        if args.labels:
            train += ["--label-column", "category"]
        run(train, out / "train.log")
        train_seconds = time.perf_counter() - started
        run([qsim, "evaluate", "--model", str(out / "model"), "--corpus", "data/banking77/train.csv", "--held-out",
             "--text-column", "text", "--label-column", "category", "--out", str(out / "eval"),
             "--skip-baselines", "tfidf", "bm25", "minilm", "--tsne-points", "0", "--latency-queries", "50"],
            out / "evaluate.log")
        report = json.loads((out / "eval" / "report.json").read_text())
        metrics = json.loads((out / "model" / "metrics.json").read_text())
        best = next(e for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"])
        ranking = {r["method"]: r for r in report["ranking"]}
        sampled = next(r for m, r in ranking.items() if "any-of" in m)
        mean = next(r for m, r in ranking.items() if "mean code" in m)
        rows.append((name, description, sampled, mean, best, train_seconds))
        print(f"{name}: done in {train_seconds:.0f} s", flush=True)

    print()
    print(f"Held-out validation rows of BANKING77 train; {args.epochs} epochs; labels {'on' if args.labels else 'off'}")
    print()
    print("| variant | any-of-25 P@1 | any-of-25 MAP@10 | mean code P@1 | mean code MAP@10 | KL (nats) | active units | "
          "val reconstruction | encode q/s | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _name, description, sampled, mean, best, seconds in rows:
        print(
            f"| {description} | {sampled['precision_at_1']:.3f} | {sampled['map_at_10']:.3f} | {mean['precision_at_1']:.3f} | "
            f"{mean['map_at_10']:.3f} | {best['val_kl']:.2f} | {best['active_units']} | {best['val_reconstruction']:.2f} | "
            f"{sampled['encode_per_second']:,.0f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
