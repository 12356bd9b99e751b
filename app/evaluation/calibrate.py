"""Choosing the search threshold t and min_pairs n on held-out data (`qsim calibrate`).

Labelled corpus: the corpus is split into a stored part and held-out queries. When it is the very
file the model was trained on (same sha256), the held-out queries are the trainer's validation rows,
which the model never learnt from, and the stored part is its training rows; otherwise a seeded
random split. A (query, stored question) pair should be returned when the two share a label.
Labelled pairs (`--pairs`): each pair should be returned when it is marked as a duplicate.

For every n in the options, the exact sweep (app/evaluation/sweep.py) gives precision and recall
at every t; the choice is the (t, n) of best F1, or with a target precision the largest recall at
precision >= target (ties: fewer pairs, then the smaller threshold). The single-code variant (the
posterior means, one pair) is swept too, for the comparison at equal precision: the claim that
sampling K codes raises recall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from app import __version__
from app.evaluation.sweep import OperatingPoint, ThresholdSweep, labelled_sweeps, paired_sweeps
from app.model.data import Corpus, PairsCorpus
from app.model.encoder import QuestionEncoder

DEFAULT_MIN_PAIRS_OPTIONS = (1, 2, 3, 5, 8, 13)
EQUAL_PRECISION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
MEAN_CODE = "mean code"


class CalibrationError(ValueError):
    """Calibration cannot give what was asked (e.g. an unreachable target precision)."""


def any_of(pairs: int) -> str:
    return f"any-of-{pairs}"


def n_of(n: int, pairs: int) -> str:
    return any_of(pairs) if n == 1 else f"{n}-of-{pairs}"


@dataclass
class Sweeps:
    """The rule swept over one data set: by_min_pairs[n] with K codes a side, mean with one code."""

    by_min_pairs: dict[int, ThresholdSweep]
    mean: ThresholdSweep
    pairs: int  # Kq x K


def holdout_split(
    corpus: Corpus, model_config: dict, fraction: float, seed: int, max_queries: int | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """-> stored row indices, held-out query row indices, and a description of the split."""
    from app.model.train import split_train_validation

    n = len(corpus)
    if n < 2:
        raise CalibrationError(f"{corpus.path}: calibration needs at least 2 rows, found {n}")
    trained_on = model_config.get("data", {}).get("sha256") == corpus.sha256
    if trained_on:
        val_fraction = model_config["settings"]["training"]["val_fraction"]
        stored, queries = split_train_validation(n, val_fraction, model_config["seed"])
        split = {"method": "the trainer's validation rows (the model's own training corpus)",
                 "fraction": val_fraction, "seed": model_config["seed"]}
    else:
        order = np.random.default_rng([seed, 0xCA1]).permutation(n)
        n_queries = min(n - 1, max(1, round(n * fraction)))
        stored, queries = np.sort(order[n_queries:]), np.sort(order[:n_queries])
        split = {"method": "seeded random split", "fraction": fraction, "seed": seed}
    if max_queries is not None and len(queries) > max_queries:
        queries = np.sort(np.random.default_rng([seed, 0x9E]).choice(queries, max_queries, replace=False))
        split["queries_sampled"] = max_queries
    split |= {"stored": int(len(stored)), "queries": int(len(queries))}
    return stored, queries, split


def sweep_labelled(
    encoder: QuestionEncoder,
    stored_texts: Sequence[str],
    stored_labels: Sequence[str],
    query_texts: Sequence[str],
    query_labels: Sequence[str],
    min_pairs_options: Sequence[int],
    *,
    stored=None,
    queries=None,
) -> Sweeps:
    """Sweeps of every query against every stored question; `stored`/`queries` may pass texts
    already encoded with K samples (app.model.encoder.Encoded)."""
    k = encoder.samples_per_question
    stored = stored if stored is not None else encoder.encode(stored_texts, k)
    queries = queries if queries is not None else encoder.encode(query_texts, k)
    by_n = labelled_sweeps(queries.samples, query_labels, stored.samples, stored_labels, encoder.metric, min_pairs_options)
    mean = labelled_sweeps(queries.mean[:, None], query_labels, stored.mean[:, None], stored_labels, encoder.metric)[1]
    return Sweeps(by_n, mean, k * k)


def sweep_pairs(encoder: QuestionEncoder, pairs: PairsCorpus, min_pairs_options: Sequence[int]) -> Sweeps:
    k = encoder.samples_per_question
    texts = sorted(set(pairs.left) | set(pairs.right))
    position = {text: i for i, text in enumerate(texts)}
    encoded = encoder.encode(texts, k)
    left = np.array([position[t] for t in pairs.left])
    right = np.array([position[t] for t in pairs.right])
    by_n = paired_sweeps(encoded.samples[left], encoded.samples[right], pairs.duplicate, encoder.metric, min_pairs_options)
    mean = paired_sweeps(encoded.mean[left, None], encoded.mean[right, None], pairs.duplicate, encoder.metric)[1]
    return Sweeps(by_n, mean, k * k)


def operating_point(sweep: ThresholdSweep, target_precision: float | None) -> OperatingPoint | None:
    return sweep.best_f1() if target_precision is None else sweep.max_recall_at_precision(target_precision)


def _better(a: OperatingPoint, b: OperatingPoint | None, target_precision: float | None) -> bool:
    """Is a strictly better than b for the objective? (Equal ones keep the earlier, fewer pairs.)"""
    if b is None:
        return True
    if target_precision is None:
        return a.f1 > b.f1
    return (a.recall, a.precision) > (b.recall, b.precision)


def choose(sweeps: Sweeps, target_precision: float | None) -> OperatingPoint:
    best: OperatingPoint | None = None
    for n in sorted(sweeps.by_min_pairs):
        point = operating_point(sweeps.by_min_pairs[n], target_precision)
        if point is not None and _better(point, best, target_precision):
            best = point
    if best is None:
        if target_precision is None:
            raise CalibrationError("the held-out data has no pair that should match; cannot calibrate")
        reachable = max(float(s.precision.max(initial=0.0)) for s in sweeps.by_min_pairs.values())
        raise CalibrationError(
            f"no threshold reaches precision {target_precision}; the highest reached is {reachable:.3f}"
        )
    return best


def variant_table(sweeps: Sweeps, target_precision: float | None) -> list[dict]:
    """Each variant at its own best threshold for the objective (None where the target is unreachable)."""
    rows = [{"variant": MEAN_CODE, "samples": 1, **_point_dict(operating_point(sweeps.mean, target_precision), 1)}]
    for n, sweep in sorted(sweeps.by_min_pairs.items()):
        point = operating_point(sweep, target_precision)
        rows.append({"variant": n_of(n, sweeps.pairs), "samples": int(round(sweeps.pairs**0.5)), **_point_dict(point, n)})
    return rows


def _point_dict(point: OperatingPoint | None, n: int) -> dict:
    if point is None:
        return {"min_pairs": n, "threshold": None, "precision": None, "recall": None, "f1": None}
    return point.as_dict()


def equal_precision_comparison(
    mean: ThresholdSweep, variants: dict[str, ThresholdSweep], levels: Sequence[float] = EQUAL_PRECISION_LEVELS
) -> dict:
    """The largest recall each variant reaches at precision >= p, for each level p (the given levels
    and the precision of each variant's best-F1 point, where the comparison matters most); and how
    the sampled variants compare with the single mean code ("sampling raises recall")."""
    # Rounded down, so that the variant itself still reaches the level.
    operating = {math.floor(point.precision * 1000) / 1000 for s in (mean, *variants.values()) if (point := s.best_f1())}
    rows = []
    for level in sorted(set(levels) | operating):
        row: dict = {"precision": level, "recall": {}}
        for name, sweep in {MEAN_CODE: mean, **variants}.items():
            point = sweep.max_recall_at_precision(level)
            row["recall"][name] = None if point is None else point.recall
        rows.append(row)
    verdict = {}
    for name in variants:
        deltas = [
            r["recall"][name] - r["recall"][MEAN_CODE]
            for r in rows
            if r["recall"][name] is not None and r["recall"][MEAN_CODE] is not None
        ]
        verdict[name] = {
            "levels_compared": len(deltas),
            "levels_with_higher_recall": sum(d > 0 for d in deltas),
            "mean_recall_gain": float(np.mean(deltas)) if deltas else None,
        }
    return {"levels": rows, "versus_mean_code": verdict}


def comparison_variants(sweeps: Sweeps, n: int | None) -> dict[str, ThresholdSweep]:
    variants = {any_of(sweeps.pairs): sweeps.by_min_pairs[1]} if 1 in sweeps.by_min_pairs else {}
    if n is not None and n != 1 and n in sweeps.by_min_pairs:
        variants[n_of(n, sweeps.pairs)] = sweeps.by_min_pairs[n]
    return variants


def best_n_of(sweeps: Sweeps, chosen: OperatingPoint, target_precision: float | None) -> int | None:
    """The n > 1 to show as "n-of-K×K": the chosen one, or else the best n > 1 for the objective."""
    if chosen.min_pairs > 1:
        return chosen.min_pairs
    rest = Sweeps({n: s for n, s in sweeps.by_min_pairs.items() if n > 1}, sweeps.mean, sweeps.pairs)
    if not rest.by_min_pairs:
        return None
    try:
        return choose(rest, target_precision).min_pairs
    except CalibrationError:
        return None


@dataclass
class Calibration:
    chosen: OperatingPoint
    n_of_pairs: int | None  # the n > 1 reported as the "n-of-K×K" variant
    record: dict = field(repr=False)  # what is stored in config.json as search.calibration


def calibrate(
    sweeps: Sweeps,
    *,
    target_precision: float | None,
    model_id: str,
    data: dict,
    split: dict,
) -> Calibration:
    chosen = choose(sweeps, target_precision)
    n_of_pairs = best_n_of(sweeps, chosen, target_precision)
    record = {
        "method": "best F1" if target_precision is None else "largest recall at precision >= target",
        "target_precision": target_precision,
        "model_id": model_id,
        "data": data,
        "split": split,
        "chosen": chosen.as_dict() | {"variant": n_of(chosen.min_pairs, sweeps.pairs)},
        "n_of_pairs": n_of_pairs,
        "variants": variant_table(sweeps, target_precision),
        "equal_precision": equal_precision_comparison(sweeps.mean, comparison_variants(sweeps, n_of_pairs)),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "qsim_version": __version__,
    }
    return Calibration(chosen, n_of_pairs, record)
