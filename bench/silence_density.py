"""Does out-of-scope silence depend on how many questions are stored? (models/README.md)

    python -m bench.silence_density [--model models/default] [--fractions 0.7 0.85 1.0] [--draws 8]

The model's own calibration data: the trainer's validation rows of BANKING77 train as queries, a
seeded subsample of the other training rows as the stored side, the same draws of held-out intents
for every fraction. At the model's calibrated rule it prints the answered share, the precision of the
answered tops and the share of out-of-scope queries without a match. The service stores every
training row, 11% more than the calibration's stored side: this says how much that alone moves the
silence the calibration promised.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.evaluation.calibrate import DEFAULT_OUT_OF_SCOPE_FRACTION, holdout_split, sweep_labelled_draws
from app.evaluation.cli import _load_encoder
from app.model.data import read_corpus
from bench.http_bench import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/default")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.7, 0.85, 1.0])
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    encoder = _load_encoder(args.model)
    rule = encoder.artifact.settings.search
    corpus = read_corpus(ROOT / "data/banking77/train.csv", "text", "category")
    stored, queries, split = holdout_split(corpus, encoder.artifact.config, 0.1, 0, 2000)
    print(f"{args.model}: {rule.min_pairs} of 25 within {rule.threshold:.4g}; {split['method']}: "
          f"{len(queries)} queries, {len(stored)} stored, {args.draws} draws of held-out intents")
    for fraction in args.fractions:
        kept = stored if fraction >= 1 else np.sort(
            np.random.default_rng(1).choice(stored, round(fraction * len(stored)), replace=False))
        sweeps, _, _ = sweep_labelled_draws(encoder, corpus.texts, corpus.labels, kept, queries, [rule.min_pairs],
                                            DEFAULT_OUT_OF_SCOPE_FRACTION, 0, args.draws)
        at = sweeps.tops[rule.min_pairs].at(rule.threshold)
        print(f"stored {fraction:.2f} ({len(kept)}): answered {at.answered_share:.3f}, precision of answered tops "
              f"{at.precision:.3f}, out of scope without a match {at.out_of_scope_no_match:.3f}", flush=True)


if __name__ == "__main__":
    main()
