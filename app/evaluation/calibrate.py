"""Choosing the search threshold t and min_pairs n on held-out data (`qsim calibrate`).

Labelled corpus: the corpus is split into a stored part and held-out queries. When it is the very
file the model was trained on (same sha256), the held-out queries are the trainer's validation rows,
which the model never learnt from, and the stored part is its training rows; otherwise a seeded
random split. A (query, stored question) pair should be returned when the two share a label.
Labelled pairs (`--pairs`): each pair should be returned when it is marked as a duplicate.

Two objectives:

- "top" (the default): judged by what a desk sees, the first result. A query is *answered* when its
  top result passes the rule, and the answer is *right* when it is a right answer (same label; for
  pairs, a marked duplicate). A desk is also asked questions it has no answer for: with an
  out-of-scope fraction F, whole labels (a seeded F of the held-out queries' labels) are removed from
  the stored side, so their queries have no right answer and the right outcome is no match. The
  choice is the (t, n) that answers the largest share of the in-scope queries while the precision
  of every answer given (right answers / all answers, an answer to an out-of-scope query counted
  wrong, so the in-scope precision holds too) is >= the target (default 0.9) by its Wilson lower
  bound 1.645 sd down; ties: the most net right answers ((right - wrong) / queries), fewer pairs,
  smaller t. Without a target: the most net right answers. (The bound: on the tiny test model, a
  point chosen as the most net right answers, 12 of 17 right on one split, was right 4 times in 13 on
  another; a few lucky answers must not pass for a precision.) With a floor on out-of-scope silence
  (min_no_match), its bound is the lower of the one over questions and, once ten or more labels are
  held out, the one over labels (TopAnswerSweep.no_match_bound): a label the model confuses with a
  stored one is answered with all its questions, so the next unknown label is the unit too.
- "pairs": every returned question counts, micro precision and recall over all (query, stored
  question) pairs: the (t, n) of best F1, or with a target precision the largest recall at
  precision >= target (ties: fewer pairs, then the smaller threshold).

Both are recorded for the chosen point whichever objective chose it. The exact sweeps
(app/evaluation/sweep.py) give every figure at every t. The single-code variant (the posterior
means, one pair) is swept too, for the comparison at equal precision: the claim that sampling K
codes raises recall (pairs) or answers more questions (top).

Pairs files, top answers: the queries are the distinct first texts, the stored side the distinct
second texts; a query's top is right when it is one of the query's marked duplicates (in either
column), its own text on the stored side is left out, and a query with no marked duplicate among
the stored texts is out of scope (unmarked pairs count as non-duplicates, as in the pairs sweep).
An out-of-scope fraction F removes the duplicates of a seeded F of the in-scope queries from the
stored side.

`calibrate_after_training` calibrates a model fresh from `qsim train` on the trainer's validation
rows with labels, else a pairs file, else the teacher's judgement, else a self-augmentation rule;
its docstring states each rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app import __version__
from app.evaluation.sweep import (
    OperatingPoint,
    ThresholdSweep,
    TopAnswerPoint,
    TopAnswerSweep,
    labelled_rule_sweeps,
    paired_sweeps,
    rule_sweeps,
)
from app.model.data import Corpus, PairsCorpus

if TYPE_CHECKING:  # the encoder imports torch: `qsim --help` builds its parser from this module's defaults
    from app.model.encoder import QuestionEncoder

DEFAULT_MIN_PAIRS_OPTIONS = (1, 2, 3, 5, 8, 13)
EQUAL_PRECISION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
MEAN_CODE = "mean code"
OBJECTIVES = ("top", "pairs")
DEFAULT_TOP_TARGET_PRECISION = 0.9
DEFAULT_OUT_OF_SCOPE_FRACTION = 0.2  # labelled corpora, objective "top"
# Objective "top": a desk asks questions it has no answer for; at least this share of the held-out
# out-of-scope questions must get no match (Wilson lower bound, like the precision).
DEFAULT_MIN_OUT_OF_SCOPE_NO_MATCH = 0.8
# Draws of held-out labels pooled by a labelled calibration (sweep_labelled_draws).
DEFAULT_OUT_OF_SCOPE_DRAWS = 4
# Objective "top": the target must hold for the Wilson lower bound of the precision of the answers,
# this many standard deviations down (one-sided 95%), not just for the measured share (module doc).
PRECISION_CONFIDENCE_Z = 1.645
# Pairs files, objective "top": at most this many stored (second) texts: every duplicate of the
# sampled queries and a seeded sample of the others as distractors.
PAIRS_MAX_STORED = 20_000


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
    tops: dict[int, TopAnswerSweep] = field(default_factory=dict)  # the top answers, by min_pairs
    mean_top: TopAnswerSweep | None = None
    top_split: dict = field(default_factory=dict)  # how the top answers' queries and stored side were formed


def holdout_split(
    corpus: Corpus, model_config: dict, fraction: float, seed: int, max_queries: int | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """-> stored row indices, held-out query row indices, and a description of the split."""
    from app.model.artifact import SPLIT_KEEPS_COPIES_TOGETHER
    from app.model.train import split_train_validation

    n = len(corpus)
    if n < 2:
        raise CalibrationError(f"{corpus.path}: calibration needs at least 2 rows, found {n}")
    trained_on = model_config.get("data", {}).get("sha256") == corpus.sha256
    if trained_on:
        val_fraction = model_config["settings"]["training"]["val_fraction"]
        together = model_config["data"].get("validation_split") == SPLIT_KEEPS_COPIES_TOGETHER
        stored, queries = split_train_validation(n, val_fraction, model_config["seed"], corpus.texts if together else None)
        split = {"method": "the trainer's validation rows (the model's own training corpus)",
                 "fraction": val_fraction, "seed": model_config["seed"]}
    else:
        order = np.random.default_rng([seed, 0xCA1]).permutation(n)
        n_queries = min(n - 1, max(1, round(n * fraction)))
        stored, queries = np.sort(order[n_queries:]), np.sort(order[:n_queries])
        split = {"method": "seeded random split", "fraction": fraction, "seed": seed}
    if corpus.labels is not None:
        stored, queries = unlabelled_to_stored(corpus.labels, stored, queries, split)
        if len(queries) == 0:
            raise CalibrationError(f"{corpus.path}: none of the held-out rows has a label")
    if max_queries is not None and len(queries) > max_queries:
        queries = np.sort(np.random.default_rng([seed, 0x9E]).choice(queries, max_queries, replace=False))
        split["queries_sampled"] = max_queries
    split |= {"stored": int(len(stored)), "queries": int(len(queries))}
    return stored, queries, split


def unlabelled_to_stored(
    labels: Sequence[str | None], stored: np.ndarray, queries: np.ndarray, split: dict
) -> tuple[np.ndarray, np.ndarray]:
    """A held-out question without a label cannot be judged: it joins the stored side (the split
    records how many) -> (stored rows, query rows)."""
    judged = np.array([labels[i] is not None for i in queries], dtype=bool)
    if judged.all():
        return stored, queries
    split["unlabelled_moved_to_stored"] = int((~judged).sum())
    return np.sort(np.concatenate([stored, queries[~judged]])), queries[judged]


def out_of_scope_labels(query_labels: Sequence[str], fraction: float, seed: int) -> list[str]:
    """A seeded `fraction` of the queries' distinct labels (at least one, never all) to hold out from
    the stored side, so that their queries have no right answer; [] for fraction 0."""
    if not 0 <= fraction < 1:
        raise CalibrationError(f"the out-of-scope fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return []
    labels = sorted({label for label in query_labels if label is not None})
    if len(labels) < 2:
        raise CalibrationError(
            f"holding out labels as out of scope needs at least 2 labels among the held-out queries, found {len(labels)}"
        )
    count = min(len(labels) - 1, max(1, round(fraction * len(labels))))
    return sorted(np.random.default_rng([seed, 0x005C0]).choice(labels, count, replace=False).tolist())


def drop_out_of_scope(
    stored_rows: np.ndarray, labels: Sequence[str], query_rows: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, dict]:
    """Removes the rows of a seeded `fraction` of the query labels from the stored rows
    -> (stored rows kept, a description for the record)."""
    held = out_of_scope_labels([labels[i] for i in query_rows], fraction, seed)
    if not held:
        return stored_rows, {"fraction": 0.0, "labels": [], "queries": 0, "stored_removed": 0}
    held_set = set(held)
    keep = np.array([labels[i] not in held_set for i in stored_rows], dtype=bool)
    described = {
        "fraction": fraction, "seed": seed, "labels": held,
        "queries": int(sum(labels[i] in held_set for i in query_rows)),
        "stored_removed": int((~keep).sum()),
        "rule": "whole labels removed from the stored side; their queries should get no match",
    }
    return stored_rows[keep], described


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
    """Sweeps (pairwise and top answers) of every query against every stored question;
    `stored`/`queries` may pass texts already encoded with K samples (app.model.encoder.Encoded).
    A query whose label no stored question has is out of scope."""
    k = encoder.samples_per_question
    stored = stored if stored is not None else encoder.encode(stored_texts, k)
    queries = queries if queries is not None else encoder.encode(query_texts, k)
    by_n, tops = labelled_rule_sweeps(
        queries.samples, query_labels, stored.samples, stored_labels, encoder.metric, min_pairs_options
    )
    mean, mean_top = labelled_rule_sweeps(
        queries.mean[:, None], query_labels, stored.mean[:, None], stored_labels, encoder.metric
    )
    return Sweeps(by_n, mean[1], k * k, tops, mean_top[1])


def merge_sweeps(parts: Sequence[Sweeps]) -> Sweeps:
    """Sweeps of several draws of the same held-out data pooled into one: their pairs side by side,
    their queries one after the other (each draw's queries counted as queries of their own for the
    shares; for the lower bounds, the same questions are counted once: `copies`)."""
    if len(parts) == 1:
        return parts[0]

    def pairwise(sweeps: list[ThresholdSweep]) -> ThresholdSweep:
        return ThresholdSweep(np.concatenate([s.relevant for s in sweeps]), np.concatenate([s.irrelevant for s in sweeps]),
                              sweeps[0].min_pairs)

    def top(sweeps: list[TopAnswerSweep]) -> TopAnswerSweep:
        offsets = np.cumsum([0] + [len(s.in_scope) for s in sweeps[:-1]])
        return TopAnswerSweep(
            np.concatenate([s.query + offset for s, offset in zip(sweeps, offsets, strict=True)]),
            np.concatenate([s.score for s in sweeps]), np.concatenate([s.right for s in sweeps]),
            np.concatenate([s.in_scope for s in sweeps]), min_pairs=sweeps[0].min_pairs,
            copies=sum(s.copies for s in sweeps),
            groups=None if any(s.groups is None for s in sweeps) else np.concatenate([s.groups for s in sweeps]),
        )

    first = parts[0]
    return Sweeps(
        {n: pairwise([p.by_min_pairs[n] for p in parts]) for n in first.by_min_pairs},
        pairwise([p.mean for p in parts]), first.pairs,
        {n: top([p.tops[n] for p in parts]) for n in first.tops},
        None if first.mean_top is None else top([p.mean_top for p in parts]),
    )


def sweep_labelled_draws(
    encoder: QuestionEncoder, texts: Sequence[str], labels: Sequence[str], stored_rows: np.ndarray,
    query_rows: np.ndarray, min_pairs_options: Sequence[int], out_of_scope_fraction: float, seed: int, draws: int,
) -> tuple[Sweeps, np.ndarray, list[dict]]:
    """The labelled sweep with `draws` seeded draws of out-of-scope labels (seeds seed, seed + 1, ...),
    pooled (merge_sweeps): which labels are held out moves the out-of-scope figures by several
    points, so one draw is a noisy basis for a threshold. Every text is encoded once.
    -> (pooled sweeps, the first draw's stored rows, the split's out-of-scope entries for the record:
    "out_of_scope" (the first draw) and, with several draws, "out_of_scope_draws")."""
    from app.model.encoder import Encoded

    k = encoder.samples_per_question
    stored_all = encoder.encode([texts[i] for i in stored_rows], k)
    queries = encoder.encode([texts[i] for i in query_rows], k)
    query_labels = [labels[i] for i in query_rows]
    position = {int(row): p for p, row in enumerate(stored_rows)}
    parts, kept_rows, described = [], [], []
    for draw in range(max(1, draws) if out_of_scope_fraction > 0 else 1):
        kept, description = drop_out_of_scope(stored_rows, labels, query_rows, out_of_scope_fraction, seed + draw)
        at = np.array([position[int(row)] for row in kept], dtype=np.int64)
        stored = Encoded(stored_all.mean[at], stored_all.scale[at], stored_all.samples[at])
        parts.append(sweep_labelled(encoder, (), [labels[i] for i in kept], (), query_labels, min_pairs_options,
                                    stored=stored, queries=queries))
        kept_rows.append(kept)
        described.append(description)
    if out_of_scope_fraction == 0:
        return parts[0], kept_rows[0], {"out_of_scope": described[0]}
    return merge_sweeps(parts), kept_rows[0], {
        "out_of_scope": described[0] | {"draws": len(described)}, "out_of_scope_draws": described,
    }


def _pairs_top_answers(
    pairs: PairsCorpus, codes: Callable[[list[str], bool], np.ndarray], metric: str, min_pairs_options: Sequence[int],
    *, out_of_scope_fraction: float, seed: int, max_queries: int | None,
) -> tuple[dict[int, TopAnswerSweep], TopAnswerSweep, dict]:
    """The top answers of a pairs file (rule in the module docstring). codes(texts, mean) -> (n, K|1, D)."""
    duplicates: dict[str, set[str]] = {}
    for a, b, dup in zip(pairs.left, pairs.right, pairs.duplicate, strict=True):
        if dup:
            duplicates.setdefault(a, set()).add(b)
            duplicates.setdefault(b, set()).add(a)
    queries = sorted(set(pairs.left))
    stored_all = sorted(set(pairs.right))
    stored_set = set(stored_all)
    rng = np.random.default_rng([seed, 0x9A1])
    answerable = [q for q in queries if (duplicates.get(q, set()) - {q}) & stored_set]
    held: list[str] = []
    if out_of_scope_fraction > 0 and answerable:
        count = min(len(answerable), max(1, round(out_of_scope_fraction * len(answerable))))
        held = sorted(rng.choice(answerable, count, replace=False).tolist())
    removed = set().union(*(duplicates[q] for q in held)) & stored_set if held else set()
    stored_set -= removed
    sampled = None
    if max_queries is not None and len(queries) > max_queries:
        queries = sorted(rng.choice(queries, max_queries, replace=False).tolist())
        sampled = max_queries
    partners = set().union(*(duplicates.get(q, set()) for q in queries)) & stored_set
    stored = sorted(stored_set)
    capped = None
    if len(stored) > PAIRS_MAX_STORED:
        others = sorted(stored_set - partners)
        room = max(0, PAIRS_MAX_STORED - len(partners))
        stored = sorted(partners | set(rng.choice(others, min(room, len(others)), replace=False).tolist()))
        capped = PAIRS_MAX_STORED
    position = {text: i for i, text in enumerate(stored)}
    answers = [sorted(position[t] for t in duplicates.get(q, set()) if t in position and t != q) for q in queries]
    own = [position.get(q, -1) for q in queries]
    in_scope = np.array([bool(a) for a in answers])

    def judge(rows: slice):
        right = np.zeros((rows.stop - rows.start, len(stored)), dtype=bool)
        usable = np.ones_like(right)
        for i, q in enumerate(range(rows.start, rows.stop)):
            right[i, answers[q]] = True
            if own[q] >= 0:
                usable[i, own[q]] = False
        return None, right, usable

    split = {
        "queries": len(queries), "stored": len(stored), "in_scope": int(in_scope.sum()),
        "top_rule": "queries: the distinct first texts; stored: the distinct second texts; right: a marked duplicate; "
        "a query's own text is not an answer; a query without a marked duplicate among the stored texts is out of scope",
        "out_of_scope": {"fraction": out_of_scope_fraction, "seed": seed, "queries_held_out": len(held),
                         "stored_removed": len(removed), "queries": int((~in_scope).sum())},
    } | ({"queries_sampled": sampled} if sampled else {}) | ({"stored_capped": capped} if capped else {})
    if not queries or not stored:
        raise CalibrationError("the pairs file leaves no query or no stored question for the top answers")
    _, tops = rule_sweeps(codes(queries, False), codes(stored, False), metric, min_pairs_options, judge, in_scope,
                          pairwise=False)
    _, mean_top = rule_sweeps(codes(queries, True), codes(stored, True), metric, [1], judge, in_scope, pairwise=False)
    return tops, mean_top[1], split


def sweep_pairs(
    encoder: QuestionEncoder,
    pairs: PairsCorpus,
    min_pairs_options: Sequence[int],
    *,
    tops: bool = True,
    out_of_scope_fraction: float = 0.0,
    seed: int = 0,
    max_queries: int | None = None,
) -> Sweeps:
    """The pairwise sweep over every labelled pair; with tops (the default), also the top answers
    (see the module docstring), their split described in Sweeps.top_split."""
    if len(pairs) == 0:
        raise CalibrationError(f"{pairs.path or 'the pairs'}: no pairs to calibrate on")
    k = encoder.samples_per_question
    texts = sorted(set(pairs.left) | set(pairs.right))
    position = {text: i for i, text in enumerate(texts)}
    encoded = encoder.encode(texts, k)
    left = np.array([position[t] for t in pairs.left])
    right = np.array([position[t] for t in pairs.right])
    by_n = paired_sweeps(encoded.samples[left], encoded.samples[right], pairs.duplicate, encoder.metric, min_pairs_options)
    mean = paired_sweeps(encoded.mean[left, None], encoded.mean[right, None], pairs.duplicate, encoder.metric)[1]
    if not tops:
        return Sweeps(by_n, mean, k * k)

    def codes(chosen: list[str], mean_code: bool) -> np.ndarray:
        rows = np.array([position[t] for t in chosen], dtype=np.int64)
        return encoded.mean[rows, None] if mean_code else encoded.samples[rows]

    answers, mean_top, split = _pairs_top_answers(
        pairs, codes, encoder.metric, min_pairs_options,
        out_of_scope_fraction=out_of_scope_fraction, seed=seed, max_queries=max_queries,
    )
    return Sweeps(by_n, mean, k * k, answers, mean_top, split)


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


def choose_top(
    sweeps: Sweeps, target_precision: float | None, z: float = PRECISION_CONFIDENCE_Z, min_no_match: float | None = None
) -> TopAnswerPoint:
    """The objective "top" over every min_pairs option (TopAnswerSweep.best): the largest answered
    share with precision of the answers >= target (its Wilson lower bound, z sd down) and, with
    min_no_match, at least that share of out-of-scope queries without a match (same bound); ties:
    more net right answers; without a target the most net right answers; then fewer pairs, the
    smaller t."""
    if not sweeps.tops:
        raise CalibrationError("no top answers were swept; cannot calibrate for the top answer")
    best: TopAnswerPoint | None = None
    for n in sorted(sweeps.tops):
        point = sweeps.tops[n].best(target_precision, z, min_no_match)
        key = (lambda p: (p.net, p.answered)) if target_precision is None else (lambda p: (p.answered, p.net))
        if point is not None and (best is None or key(point) > key(best)):
            best = point
    if best is None:
        if not any(s.queries for s in sweeps.tops.values()):
            raise CalibrationError("no held-out query has a right answer among the stored questions; cannot calibrate")
        reachable = max(s.highest_precision(z) for s in sweeps.tops.values())
        bound = f" (the lower bound of the precision, {z:g} sd down)" if z else ""
        silence = f" with at least {min_no_match:.0%} of out-of-scope questions unanswered" if min_no_match else ""
        raise CalibrationError(
            f"no threshold reaches precision {target_precision} of the answered top results{silence}; "
            f"the highest reached is {reachable:.3f}{bound}"
        )
    return best


def pairwise_at(sweep: ThresholdSweep, threshold: float) -> OperatingPoint:
    """The pairwise figures of the rule at a given threshold, as an operating point."""
    return OperatingPoint(float(threshold), sweep.min_pairs, **sweep.at(threshold).as_dict())


def _top_sweep(sweeps: Sweeps, variant_n: int | None) -> TopAnswerSweep | None:
    """variant_n None: the mean code."""
    return sweeps.mean_top if variant_n is None else sweeps.tops.get(variant_n)


def variant_table(sweeps: Sweeps, target_precision: float | None, objective: str = "pairs",
                  z: float = PRECISION_CONFIDENCE_Z, min_no_match: float | None = None) -> list[dict]:
    """Each variant at its own best threshold for the objective (None where the target is
    unreachable), with the other view's figures at that threshold under "top" / the pairwise keys."""
    rows = []
    variants = [(MEAN_CODE, 1, None, sweeps.mean)] + [
        (n_of(n, sweeps.pairs), int(round(sweeps.pairs**0.5)), n, sweep) for n, sweep in sorted(sweeps.by_min_pairs.items())
    ]
    for name, samples, n, sweep in variants:
        top_sweep = _top_sweep(sweeps, n)
        if objective == "top":
            top = top_sweep.best(target_precision, z, min_no_match) if top_sweep is not None else None
            point = None if top is None else pairwise_at(sweep, top.threshold)
        else:
            point = operating_point(sweep, target_precision)
            top = None if point is None or top_sweep is None else top_sweep.at(point.threshold)
        rows.append({"variant": name, "samples": samples, **_point_dict(point, n or 1),
                     "top": None if top is None else top.as_dict()})
    return rows


def top_equal_precision_comparison(
    mean: TopAnswerSweep, variants: dict[str, TopAnswerSweep], levels: Sequence[float] = EQUAL_PRECISION_LEVELS
) -> dict:
    """The largest answered share each variant reaches with precision of the answered tops >= p,
    for each level p (the given levels and each variant's best net point's precision, rounded
    down); and how the sampled variants compare with the single mean code."""
    operating = {
        math.floor(point.precision * 1000) / 1000
        for s in (mean, *variants.values())
        if (point := s.best(None)) is not None and point.precision is not None
    }
    rows = []
    for level in sorted(set(levels) | operating):
        row: dict = {"precision": level, "answered_share": {}}
        for name, sweep in {MEAN_CODE: mean, **variants}.items():
            point = sweep.max_answered_at_precision(level)
            row["answered_share"][name] = None if point is None else point.answered_share
        rows.append(row)
    verdict = {}
    for name in variants:
        deltas = [
            r["answered_share"][name] - r["answered_share"][MEAN_CODE]
            for r in rows
            if r["answered_share"][name] is not None and r["answered_share"][MEAN_CODE] is not None
        ]
        verdict[name] = {
            "levels_compared": len(deltas),
            "levels_answering_more": sum(d > 0 for d in deltas),
            "levels_answering_fewer": sum(d < 0 for d in deltas),
            "mean_answered_gain": float(np.mean(deltas)) if deltas else None,
        }
    return {"levels": rows, "versus_mean_code": verdict}


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


def top_comparison_variants(sweeps: Sweeps, n: int | None) -> dict[str, TopAnswerSweep]:
    variants = {any_of(sweeps.pairs): sweeps.tops[1]} if 1 in sweeps.tops else {}
    if n is not None and n != 1 and n in sweeps.tops:
        variants[n_of(n, sweeps.pairs)] = sweeps.tops[n]
    return variants


def best_n_of(sweeps: Sweeps, chosen: OperatingPoint, target_precision: float | None, objective: str = "pairs",
              z: float = PRECISION_CONFIDENCE_Z, min_no_match: float | None = None) -> int | None:
    """The n > 1 to show as "n-of-K×K": the chosen one, or else the best n > 1 for the objective."""
    if chosen.min_pairs > 1:
        return chosen.min_pairs
    rest = Sweeps(
        {n: s for n, s in sweeps.by_min_pairs.items() if n > 1}, sweeps.mean, sweeps.pairs,
        {n: s for n, s in sweeps.tops.items() if n > 1}, sweeps.mean_top,
    )
    if not rest.by_min_pairs:
        return None
    try:
        if objective == "top":
            return choose_top(rest, target_precision, z, min_no_match).min_pairs
        return choose(rest, target_precision).min_pairs
    except CalibrationError:
        return None


@dataclass
class Calibration:
    chosen: OperatingPoint  # the pairwise figures at the chosen (t, n), whichever objective chose it
    n_of_pairs: int | None  # the n > 1 reported as the "n-of-K×K" variant
    record: dict = field(repr=False)  # what is stored in config.json as search.calibration
    top: TopAnswerPoint | None = None  # the top answers at the chosen (t, n), when swept


METHODS = {
    ("top", True): "top answers: the largest answered share with precision of every answer given >= target "
    "(answers to out-of-scope queries wrong)",
    ("top", False): "top answers: most net right answers (right - wrong, answers to out-of-scope queries wrong), "
    "no precision floor",
    ("pairs", False): "best F1",
    ("pairs", True): "largest recall at precision >= target",
}


def calibrate(
    sweeps: Sweeps,
    *,
    target_precision: float | None,
    model_id: str,
    data: dict,
    split: dict,
    objective: str = "pairs",
    z: float = PRECISION_CONFIDENCE_Z,
    min_no_match: float | None = None,
) -> Calibration:
    """z: objective "top" only, the target holds for the precision's Wilson lower bound z sd down.
    min_no_match: objective "top" with a target only, the share of out-of-scope queries that must get
    no match (by the same bound; held-out data without out-of-scope queries ignores it)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective == "top":
        top = choose_top(sweeps, target_precision, z, min_no_match)
        chosen = pairwise_at(sweeps.by_min_pairs[top.min_pairs], top.threshold)
    else:
        chosen = choose(sweeps, target_precision)
        top = sweeps.tops[chosen.min_pairs].at(chosen.threshold) if chosen.min_pairs in sweeps.tops else None
    n_of_pairs = best_n_of(sweeps, chosen, target_precision, objective, z, min_no_match)
    bound_z = z or PRECISION_CONFIDENCE_Z
    top_sweep = sweeps.tops.get(chosen.min_pairs)
    silence = {} if top is None or not top.out_of_scope else {
        "no_match_lower_bound": top_sweep.no_match_bound_at(top.threshold, bound_z),
        "no_match_bound_counts": top_sweep.no_match_bound_kind,
        "out_of_scope_groups": top_sweep.out_of_scope_groups,
    }
    record = {
        "objective": objective,
        "method": METHODS[objective, target_precision is not None]
        + (f" (its Wilson lower bound, {z:g} sd down)" if objective == "top" and target_precision is not None and z else ""),
        "target_precision": target_precision,
        "min_out_of_scope_no_match": min_no_match if objective == "top" and target_precision is not None else None,
        "model_id": model_id,
        "data": data,
        "split": split | ({"top_answers": sweeps.top_split} if sweeps.top_split else {}),
        "chosen": chosen.as_dict() | {"variant": n_of(chosen.min_pairs, sweeps.pairs),
                                      "top": None if top is None else top.as_dict()
                                      | {"precision_lower_bound": top.precision_bound(bound_z), "bound_z": bound_z}
                                      | silence},
        "n_of_pairs": n_of_pairs,
        "variants": variant_table(sweeps, target_precision, objective, z, min_no_match),
        "equal_precision": equal_precision_comparison(sweeps.mean, comparison_variants(sweeps, n_of_pairs)),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "qsim_version": __version__,
    }
    if sweeps.mean_top is not None and sweeps.tops:
        record["top_equal_precision"] = top_equal_precision_comparison(
            sweeps.mean_top, top_comparison_variants(sweeps, n_of_pairs)
        )
    return Calibration(chosen, n_of_pairs, record, top)


def calibrate_with_floor(sweeps: Sweeps, *, min_no_match: float | None, **options) -> Calibration:
    """`calibrate` with the out-of-scope floor, or, when no threshold keeps it beside the target, with
    the target alone: the record then says no_match_reached false and why (`note`). Raises
    CalibrationError when the target alone is unreachable too."""
    try:
        return calibrate(sweeps, min_no_match=min_no_match, **options)
    except CalibrationError as silence_unreachable:
        if min_no_match is None:
            raise
        result = calibrate(sweeps, **options)
        result.record |= {"min_out_of_scope_no_match": min_no_match, "no_match_reached": False,
                          "note": str(silence_unreachable)}
        return result


# ------------------------------------------------------------------------- after `qsim train`

# Teacher pseudo-pairs: a validation question and a stored question are duplicates when the
# teacher's cosine similarity is >= TEACHER_DUPLICATE_COSINE; a top answer is right when it is one of
# the validation question's TEACHER_NEIGHBOURS nearest stored questions by the teacher and a
# duplicate; a validation question with no duplicate is out of scope. On BANKING77's training rows
# (the trainer's validation rows, seed 13, against the rest; all-MiniLM-L6-v2), pairs at cosine
# >= 0.8 share the intent 89% of the time (0.7: 69%, 0.9: 97%) and 88% of the questions have one.
TEACHER_DUPLICATE_COSINE = 0.8
TEACHER_NEIGHBOURS = 10
# The cutoff stays fixed although the teacher's scale moves with the domain. On SNIPS's voice
# requests (same intent, other names: "play X by Y") 12% of the validation questions have a stored
# question at 0.8, so a text-only model answered 13.5% of SNIPS's queries, right 100% of the time,
# while ranking them at P@1 0.95; a cutoff lowered until 88% have one (as on BANKING77) answered 44%
# at 0.988 there, but on a desk of distinct questions (WebQuestions) it fell to 0.57 and called "what
# college did matt lauer attend?" a duplicate of "what college did jerry rice attend?". Which of the
# two a desk means cannot be read from unlabelled text, so the calibration keeps to the side of
# answers that are right and says so when few of the desk's questions have a duplicate.
TEACHER_FEW_DUPLICATES = 0.5
# A rule that answers only exact repeats: identical codes are within this of each other.
IDENTICAL_ONLY_THRESHOLD = 1e-9
# No labels, pairs or teacher: each validation question's self-augmented copy (one word deleted,
# two neighbouring words swapped, or the question mark toggled) should find the question itself.
# t = this quantile of the copies' n-th pair distance to their originals.
FALLBACK_QUANTILE = 0.9


def teacher_judge(query_vectors: np.ndarray, stored_vectors: np.ndarray, cutoff: float = TEACHER_DUPLICATE_COSINE,
                  neighbours: int = TEACHER_NEIGHBOURS):
    """-> (judge for rule_sweeps, in_scope) from teacher embeddings (rule above)."""
    q = _unit(query_vectors)
    s = _unit(stored_vectors)
    k = min(neighbours, s.shape[0])

    def judge(rows: slice):
        cosine = q[rows] @ s.T
        duplicate = cosine >= cutoff
        kth = -np.partition(-cosine, k - 1, axis=1)[:, k - 1 : k]
        return duplicate, duplicate & (cosine >= kth), None

    in_scope = np.zeros(len(q), dtype=bool)
    for start in range(0, len(q), 1024):
        in_scope[start : start + 1024] = (q[start : start + 1024] @ s.T).max(axis=1, initial=-1.0) >= cutoff
    return judge, in_scope


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def sweep_teacher(encoder: QuestionEncoder, stored_texts: Sequence[str], query_texts: Sequence[str],
                  stored_vectors: np.ndarray, query_vectors: np.ndarray, min_pairs_options: Sequence[int]) -> Sweeps:
    """Sweeps with the teacher's pseudo-pairs as the truth (TEACHER_DUPLICATE_COSINE, TEACHER_NEIGHBOURS)."""
    k = encoder.samples_per_question
    stored = encoder.encode(stored_texts, k)
    queries = encoder.encode(query_texts, k)
    judge, in_scope = teacher_judge(query_vectors, stored_vectors)
    by_n, tops = rule_sweeps(queries.samples, stored.samples, encoder.metric, min_pairs_options, judge, in_scope)
    mean, mean_top = rule_sweeps(queries.mean[:, None], stored.mean[:, None], encoder.metric, [1], judge, in_scope)
    return Sweeps(by_n, mean[1], k * k, tops, mean_top[1])


def _note_few_duplicates(record: dict, share: float, log: Callable[[str], None]) -> None:
    """Records `share`, the validation questions with a teacher duplicate; below TEACHER_FEW_DUPLICATES,
    notes (and logs) that the rule will answer few questions and what calibrates it for intents."""
    record["validation_with_duplicate"] = share
    if share < TEACHER_FEW_DUPLICATES:
        record["scope_note"] = (
            f"only {share:.0%} of the validation questions have a stored question the teacher calls a duplicate "
            f"(cosine >= {TEACHER_DUPLICATE_COSINE}), so the rule answers only questions that close; where questions "
            "of the same intent should match, calibrate with labels (qsim train/calibrate --label-column) or on "
            "the agents' verdicts (qsim calibrate --feedback)"
        )
        log(f"calibration: {record['scope_note']}")


def self_augmented(text: str, rng: np.random.Generator) -> str:
    """A copy of a question with one small surface edit: one word deleted (4 words or more), two
    neighbouring words swapped (2-3 words), or the final question mark toggled (one word)."""
    words = text.split()
    if len(words) >= 4:
        del words[int(rng.integers(len(words)))]
        return " ".join(words)
    if len(words) >= 2:
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    return text[:-1] if text.endswith("?") else text + "?"


def _fallback_calibration(encoder: QuestionEncoder, stored_texts: list[str], query_texts: list[str],
                          options: Sequence[int], seed: int) -> tuple[TopAnswerPoint, dict]:
    """No labels, pairs or teacher: for each n, t_n = the FALLBACK_QUANTILE of the copies' n-th pair
    distance to their own originals; the n chosen is the one whose first results are most often the
    original (net right answers, every other first result counted wrong) at its t_n."""
    from app.evaluation.sweep import aligned_pair_distances, nth_smallest

    k = encoder.samples_per_question
    copies = [self_augmented(text, np.random.default_rng([seed, 0xA06, i])) for i, text in enumerate(query_texts)]
    originals = encoder.encode(query_texts, k)
    copied = encoder.encode(copies, k)
    stored = encoder.encode(stored_texts, k)
    nth = nth_smallest(aligned_pair_distances(copied.samples, originals.samples, encoder.metric), options)
    everything = np.concatenate([stored.samples, originals.samples])
    own = len(stored_texts) + np.arange(len(query_texts))

    def judge(rows: slice):
        right = np.zeros((rows.stop - rows.start, len(everything)), dtype=bool)
        right[np.arange(rows.stop - rows.start), own[rows]] = True
        return None, right, None

    _, tops = rule_sweeps(copied.samples, everything, encoder.metric, options, judge,
                          np.ones(len(query_texts), dtype=bool), pairwise=False)
    best: TopAnswerPoint | None = None
    per_n = {}
    for n in options:
        value = float(np.quantile(nth[n], FALLBACK_QUANTILE, method="higher"))
        threshold = float(np.nextafter(np.float32(value), np.float32(np.inf)))  # the quantile's own copy matches
        point = tops[n].at(threshold)
        per_n[n] = point.as_dict()
        if best is None or (point.net, point.answered) > (best.net, best.answered):
            best = point
    return best, {"copies": len(copies), "quantile": FALLBACK_QUANTILE, "by_min_pairs": per_n,
                  "examples": [{"question": q, "copy": c} for q, c in list(zip(query_texts, copies, strict=True))[:3]]}


def calibrate_after_training(
    model_dir: Path,
    corpus: Corpus,
    validation_rows: np.ndarray,
    *,
    pairs: PairsCorpus | None = None,
    teacher: np.ndarray | None = None,
    target_precision: float = DEFAULT_TOP_TARGET_PRECISION,
    min_no_match: float | None = DEFAULT_MIN_OUT_OF_SCOPE_NO_MATCH,
    log: Callable[[str], None] = print,
    out_of_scope_fraction: float = DEFAULT_OUT_OF_SCOPE_FRACTION,
    out_of_scope_draws: int = DEFAULT_OUT_OF_SCOPE_DRAWS,
    min_pairs_options: Sequence[int] = DEFAULT_MIN_PAIRS_OPTIONS,
    max_queries: int | None = 2000,
    seed: int = 0,
) -> dict:
    """Calibrates a model fresh from `qsim train` for the top answer and stores the search defaults in
    its artifact -> the calibration record (config.json's search.calibration).

    The queries are the trainer's validation rows (a seeded sample of at most max_queries), which it
    did not learn from; the stored side is every other row of the corpus. The truth, in this order:

    1. labels (corpus.labels): same label = right; a seeded out_of_scope_fraction of the validation
       rows' labels is removed from the stored side, so their questions should get no match;
    2. a pairs file: the pairs' own top answers (see the module docstring), the corpus unused;
       `qsim train` passes the pairs it held out of training (Trainer.held_out_pairs);
    3. teacher embeddings (N, E) of the corpus rows: pseudo-pairs (TEACHER_DUPLICATE_COSINE,
       TEACHER_NEIGHBOURS): the teacher's duplicates are the right answers, and a validation
       question without any is out of scope;
    4. none of these: the self-augmentation rule (FALLBACK_QUANTILE): t at which 90% of the
       validation questions' lightly edited copies match their originals, a rule about surface form
       only; the record says so.

    With 1-3 the choice is the objective "top" at target_precision, with at least min_no_match of
    the out-of-scope questions unanswered; when no threshold reaches both, the target alone (the
    record says no_match_reached false); when none reaches the target, the most net right answers
    with no floor, and the record says target_reached false.
    """
    from app.model.artifact import update_search_defaults
    from app.model.config import SearchDefaults
    from app.model.encoder import QuestionEncoder

    encoder = QuestionEncoder.load(model_dir)
    n = len(corpus)
    validation = np.unique(np.asarray(validation_rows, dtype=np.int64))
    if len(validation) == 0 or validation[0] < 0 or validation[-1] >= n:
        raise CalibrationError(f"validation rows must be a non-empty set of row indices in 0..{n - 1}")
    stored_rows = np.setdiff1d(np.arange(n), validation)
    if len(stored_rows) == 0:
        raise CalibrationError("every row is a validation row: nothing is left to store")
    queries = validation
    split = {"method": "the trainer's validation rows against the rest of the corpus", "validation_rows": int(len(validation))}
    if max_queries is not None and len(queries) > max_queries:
        queries = np.sort(np.random.default_rng([seed, 0x9E]).choice(queries, max_queries, replace=False))
        split["queries_sampled"] = max_queries
    options = sorted({m for m in min_pairs_options if m <= encoder.samples_per_question**2}) or [1]
    texts = corpus.texts
    described = {"path": corpus.path, "sha256": corpus.sha256, "rows": n}
    sweeps, source, rule, teacher_share = None, None, None, None
    distinct = set() if corpus.labels is None else {corpus.labels[i] for i in queries} - {None}
    if corpus.labels is not None and len(distinct) < 2:
        log(f"calibration: the validation rows carry {len(distinct)} distinct label(s); same label = right needs "
            "at least 2, so the labels are not used to calibrate")
        split["labels_not_used"] = f"{len(distinct)} distinct label(s) among the validation rows"
    if corpus.labels is not None and len(distinct) >= 2:
        source = "labels"
        stored_rows, queries = unlabelled_to_stored(corpus.labels, stored_rows, queries, split)
        fraction = out_of_scope_fraction
        try:
            out_of_scope_labels([corpus.labels[i] for i in queries], fraction, seed)
        except CalibrationError as error:  # one label only: nothing to hold out
            split["out_of_scope"] = {"fraction": 0.0, "labels": [], "queries": 0, "stored_removed": 0, "note": str(error)}
            fraction = 0.0
        sweeps, stored_rows, out_of_scope = sweep_labelled_draws(
            encoder, texts, corpus.labels, stored_rows, queries, options, fraction, seed, out_of_scope_draws
        )
        for key, value in out_of_scope.items():
            split.setdefault(key, value)  # a corpus with one label only keeps its note
        described |= {"kind": "labels", "label_column": corpus.label_column}
        rule = "same label = right; whole labels held out of the stored side are out of scope"
    elif pairs is not None:
        source = "pairs"
        sweeps = sweep_pairs(encoder, pairs, options, seed=seed, max_queries=max_queries)
        described = {"kind": "pairs", "path": pairs.path, "sha256": pairs.sha256, "rows": len(pairs),
                     "duplicates": int(sum(pairs.duplicate))}
        split = {"method": "the pairs of the pairs file that training held out (every pair with a validation "
                           "question on either side, and a seeded share of the others)", "pairs": len(pairs)}
        rule = "a marked duplicate = right (the pairs file's top-answer rule)"
    elif teacher is not None:
        source = "teacher"
        teacher = np.asarray(teacher)
        if teacher.ndim != 2 or teacher.shape[0] != n:
            raise CalibrationError(f"teacher embeddings must be (rows, dim) = ({n}, …), got {teacher.shape}")
        sweeps = sweep_teacher(encoder, [texts[i] for i in stored_rows], [texts[i] for i in queries],
                               teacher[stored_rows], teacher[queries], options)
        described |= {"kind": "teacher pseudo-pairs", "teacher_dim": int(teacher.shape[1])}
        teacher_share = float(np.mean(next(iter(sweeps.tops.values())).in_scope)) if sweeps.tops else None
        rule = (f"teacher cosine >= {TEACHER_DUPLICATE_COSINE} = duplicate; a top answer is right when it is a duplicate "
                f"among the question's {TEACHER_NEIGHBOURS} nearest stored questions by the teacher; a question without "
                "a duplicate is out of scope")
    if source != "pairs":
        split |= {"stored": int(len(stored_rows)), "queries": int(len(queries))}

    record = None
    if sweeps is not None:
        try:
            record = calibrate_with_floor(sweeps, min_no_match=min_no_match, target_precision=target_precision,
                                          model_id=encoder.model_id, data=described, split=split, objective="top").record
            if record.get("no_match_reached") is False:
                log(f"calibration: {record['note']}; chose the precision target alone")
            record["target_reached"] = True
        except CalibrationError as unreachable:
            try:
                record = calibrate(sweeps, target_precision=None, model_id=encoder.model_id, data=described,
                                   split=split, objective="top").record
                record |= {"target_precision": target_precision, "target_reached": False, "note": str(unreachable)}
                if record["chosen"]["top"]["net"] <= 0:
                    # Even the best threshold answers wrongly at least as often as rightly: any rule
                    # that answers is worse than one that answers only exact repeats.
                    k = encoder.samples_per_question  # identical texts: their K diagonal pairs coincide
                    n = max((m for m in sweeps.tops if m <= k), default=min(sweeps.tops))
                    point = sweeps.tops[n].at(IDENTICAL_ONLY_THRESHOLD)
                    record["chosen"] = {"threshold": IDENTICAL_ONLY_THRESHOLD, "min_pairs": n,
                                        "variant": n_of(n, k * k), "top": point.as_dict()}
                    record["note"] = (f"{unreachable}; no threshold gives more right than wrong answers on the validation "
                                      "rows, so the rule answers only questions that repeat a stored question's text")
                    log(f"calibration: {record['note']}")
                else:
                    log(f"calibration: {unreachable}; chose the most net right answers instead")
            except CalibrationError as none_in_scope:
                log(f"calibration with {source}: {none_in_scope}; using the self-augmentation rule")
                split["note"] = f"{source}: {none_in_scope}"
        if record is not None:
            record["source"], record["rule"] = source, rule
    if record is None:
        source = "self-augmentation"
        query_texts = [texts[i] for i in queries]
        point, fallback = _fallback_calibration(encoder, [texts[i] for i in stored_rows], query_texts, options, seed)
        record = {
            "objective": "top",
            "method": f"fallback without labels, pairs or teacher: t = the {FALLBACK_QUANTILE} quantile of the distance "
            "at which each validation question's self-augmented copy matches the question itself",
            "source": source,
            "rule": "right = the copy's first result is its own original; every other first result counted wrong. "
            "This measures surface-form robustness, not meaning: calibrate with labels, pairs or a teacher when you can",
            "target_precision": target_precision,
            "target_reached": None,
            "model_id": encoder.model_id,
            "data": described | {"kind": "none"},
            "split": split | {"stored": int(len(stored_rows)) + len(query_texts), "queries": len(query_texts)},
            "chosen": {"threshold": point.threshold, "min_pairs": point.min_pairs,
                       "variant": n_of(point.min_pairs, encoder.samples_per_question**2), "top": point.as_dict()},
            "fallback": fallback,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "qsim_version": __version__,
        }
    if teacher_share is not None and record["source"] == "teacher":
        _note_few_duplicates(record, teacher_share, log)
    chosen = record["chosen"]
    update_search_defaults(model_dir, SearchDefaults(threshold=chosen["threshold"], min_pairs=chosen["min_pairs"],
                                                     calibration=record))
    top = chosen["top"]
    precision = "–" if top["precision"] is None else f"{top['precision']:.3f}"
    log(f"calibrated on {source}: threshold {chosen['threshold']:.6g}, min_pairs {chosen['min_pairs']}; top answers: "
        f"answered {top['answered_share']:.3f}, precision {precision}"
        + (f", out of scope no match {top['out_of_scope_no_match']:.3f}" if top["out_of_scope"] else ""))
    return record
