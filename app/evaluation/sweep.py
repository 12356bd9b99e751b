"""Precision and recall of the similarity rule for every threshold at once.

For a (query, stored question) pair and a given min_pairs n, the rule returns the question iff the
n-th smallest of its Kq x K pair distances is <= t (see app/search/reference.py). So one number per
pair, its *n-th pair distance*, decides the pair for every t, and sorting those numbers once gives
the exact precision and recall of the rule at every threshold.

Distances are computed in float64 and kept in float32 for the sort (30 M pairs for BANKING77 are
120 MB per variant in float32). The thresholds this module hands out are midpoints between
consecutive distinct float32 values, at least half a float32 step from any pair's value, so the
float64 rule (and the index, which answers it exactly) puts every pair on the same side as here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from app.evaluation.metrics import SetMetrics, set_metrics_from_counts

# Pair-distance blocks of at most this many float64 values (128 MB) are held at once.
BLOCK_VALUES = 16_000_000


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class StoredCodes:
    """stored (N, K, D) codes prepared once for many blocks of queries: float64 rows, and their
    squared norms ('l2') or unit rows ('cosine')."""

    def __init__(self, stored: np.ndarray, metric: str):
        if metric not in ("l2", "cosine"):
            raise ValueError(f"unknown metric {metric!r}; choose l2 or cosine")
        self.metric = metric
        self.count, self.samples, dim = stored.shape
        rows = np.asarray(stored, dtype=np.float64).reshape(-1, dim)
        self.rows = rows if metric == "l2" else _unit_rows(rows)
        self.squared_norms = (rows * rows).sum(1) if metric == "l2" else None

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """queries (q, Kq, D) -> (q, N, Kq*K) float64 pair distances.

        One matrix product (|a|^2 + |b|^2 - 2ab for 'l2'), which is what makes the full sweep
        affordable; it loses digits only for distances near 0, far below any useful threshold.
        """
        q, kq, dim = queries.shape
        a = np.asarray(queries, dtype=np.float64).reshape(q * kq, dim)
        if self.metric == "l2":
            squared = a @ self.rows.T
            squared *= -2.0
            squared += (a * a).sum(1)[:, None]
            squared += self.squared_norms[None, :]
            distances = np.sqrt(np.maximum(squared, 0.0, out=squared), out=squared)
        else:
            # A zero vector has cosine 0 with everything: distance 1, as in the reference.
            distances = 1.0 - np.clip(_unit_rows(a) @ self.rows.T, -1.0, 1.0)
        return distances.reshape(q, kq, self.count, self.samples).transpose(0, 2, 1, 3).reshape(q, self.count, -1)


def block_pair_distances(queries: np.ndarray, stored: np.ndarray, metric: str) -> np.ndarray:
    """queries (q, Kq, D), stored (N, K, D) -> (q, N, Kq*K) float64 pair distances."""
    return StoredCodes(stored, metric).distances(queries)


def aligned_pair_distances(left: np.ndarray, right: np.ndarray, metric: str) -> np.ndarray:
    """left (P, Kq, D), right (P, K, D) -> (P, Kq*K) float64: the pair distances of row i with row i."""
    a = np.asarray(left, dtype=np.float64)
    b = np.asarray(right, dtype=np.float64)
    if metric == "l2":
        distances = np.sqrt(((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1))
    elif metric == "cosine":
        distances = 1.0 - np.clip(np.einsum("pid,pkd->pik", _unit_rows(a), _unit_rows(b)), -1.0, 1.0)
    else:
        raise ValueError(f"unknown metric {metric!r}; choose l2 or cosine")
    return distances.reshape(len(a), -1)


def nth_smallest(distances: np.ndarray, ns: Sequence[int]) -> dict[int, np.ndarray]:
    """distances (..., M) -> {n: (...) the n-th smallest along the last axis} for each n in ns."""
    size = distances.shape[-1]
    bad = [n for n in ns if not 1 <= n <= size]
    if bad:
        raise ValueError(f"min_pairs {bad[0]} is outside 1..{size} (the number of pairs)")
    if set(ns) == {1}:
        return {1: distances.min(axis=-1)}
    # A full sort of the short last axis is faster than np.partition here (vectorised small sorts).
    ordered = np.sort(distances, axis=-1)
    return {n: ordered[..., n - 1] for n in ns}


@dataclass(frozen=True)
class OperatingPoint:
    """The rule at one threshold: threshold t, min_pairs n, and the quality of the returned sets."""

    threshold: float
    min_pairs: int
    precision: float
    recall: float
    f1: float
    returned: int
    true_positives: int
    relevant: int

    def as_dict(self) -> dict:
        return asdict(self)


class ThresholdSweep:
    """Exact precision/recall of "returned iff score <= t" for every t, from per-pair scores.

    relevant, irrelevant: 1-D float32 scores (the n-th pair distances) of the pairs that should and
    should not be returned. Every relevant pair is enumerated, so recall's denominator is
    len(relevant).
    """

    def __init__(self, relevant: np.ndarray, irrelevant: np.ndarray, min_pairs: int = 1):
        self.min_pairs = min_pairs
        self.relevant = np.sort(np.asarray(relevant, dtype=np.float32).ravel())
        self.irrelevant = np.sort(np.asarray(irrelevant, dtype=np.float32).ravel())
        # Precision and recall change only where a relevant pair enters, and between two such
        # places only false positives are added: every optimum of F1 or of recall at a precision
        # floor sits at a relevant pair's score. These are the candidate thresholds.
        self.candidates = np.unique(self.relevant)
        self.true_positives = np.searchsorted(self.relevant, self.candidates, side="right")
        self.returned = self.true_positives + np.searchsorted(self.irrelevant, self.candidates, side="right")

    @property
    def total_relevant(self) -> int:
        return len(self.relevant)

    @property
    def precision(self) -> np.ndarray:
        return self.true_positives / np.maximum(self.returned, 1)

    @property
    def recall(self) -> np.ndarray:
        return self.true_positives / max(self.total_relevant, 1)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)

    def at(self, threshold: float) -> SetMetrics:
        """Quality of the returned sets at threshold t (pairs with score <= t are returned)."""
        tp = int(np.searchsorted(self.relevant, threshold, side="right"))
        fp = int(np.searchsorted(self.irrelevant, threshold, side="right"))
        return set_metrics_from_counts(tp, tp + fp, self.total_relevant)

    def _separating_threshold(self, value: float) -> float:
        """A threshold that returns every pair scoring <= value and none above: the midpoint to the
        next larger score of any pair."""
        larger = [
            arr[i]
            for arr in (self.relevant, self.irrelevant)
            if (i := np.searchsorted(arr, value, side="right")) < len(arr)
        ]
        if not larger:
            return float(value) + max(abs(float(value)) * 1e-6, 1e-12)
        return (float(value) + float(min(larger))) / 2.0

    def point(self, index: int) -> OperatingPoint:
        threshold = self._separating_threshold(self.candidates[index])
        metrics = set_metrics_from_counts(
            int(self.true_positives[index]), int(self.returned[index]), self.total_relevant
        )
        return OperatingPoint(threshold, self.min_pairs, **metrics.as_dict())

    def best_f1(self) -> OperatingPoint | None:
        """The threshold of highest F1 (the smallest one among equals); None without relevant pairs."""
        if len(self.candidates) == 0:
            return None
        return self.point(int(np.argmax(self.f1)))

    def max_recall_at_precision(self, target: float) -> OperatingPoint | None:
        """The largest recall whose precision is >= target (the smallest threshold reaching it);
        None when no threshold reaches the target precision."""
        reaching = np.flatnonzero(self.precision >= target - 1e-12)
        if len(reaching) == 0:
            return None
        return self.point(int(reaching[np.argmax(self.true_positives[reaching])]))

    def curve(self, max_points: int = 400) -> dict[str, list[float]]:
        """Thresholds with their precision and recall, about max_points of them, for plots: half
        evenly spaced in t from the smallest score to the largest relevant one, half at quantiles of
        the relevant scores (where recall moves). Precision at a t between two relevant scores is
        its true value there (only false positives enter), so curves drawn through these points do
        not invent anything."""
        if len(self.candidates) == 0:
            return {"threshold": [], "precision": [], "recall": []}
        lowest = min(self.relevant[0], self.irrelevant[0]) if len(self.irrelevant) else self.relevant[0]
        even = np.linspace(float(lowest), float(self.relevant[-1]), num=max_points // 2)
        quantiles = np.quantile(self.relevant.astype(np.float64), np.linspace(0, 1, num=max_points - max_points // 2))
        thresholds = np.unique(np.concatenate([even, quantiles]))
        tp = np.searchsorted(self.relevant, thresholds, side="right")
        returned = tp + np.searchsorted(self.irrelevant, thresholds, side="right")
        return {
            "threshold": thresholds.tolist(),
            "precision": np.where(returned > 0, tp / np.maximum(returned, 1), 1.0).tolist(),
            "recall": (tp / self.total_relevant).tolist(),
        }


def _query_chunks(n_queries: int, values_per_query: int) -> Iterator[slice]:
    rows = max(1, BLOCK_VALUES // max(values_per_query, 1))
    for start in range(0, n_queries, rows):
        yield slice(start, min(start + rows, n_queries))


def labelled_sweeps(
    query_codes: np.ndarray,
    query_labels: Sequence[str],
    stored_codes: np.ndarray,
    stored_labels: Sequence[str],
    metric: str,
    min_pairs: Iterable[int] = (1,),
) -> dict[int, ThresholdSweep]:
    """query_codes (nq, Kq, D), stored_codes (N, K, D) -> {n: sweep of the rule with min_pairs n}
    over all nq x N (query, stored question) pairs; relevant = same label."""
    judge, in_scope = label_judge(query_labels, stored_labels)
    return rule_sweeps(query_codes, stored_codes, metric, min_pairs, judge, in_scope, tops=False)[0]


def paired_sweeps(
    left_codes: np.ndarray,
    right_codes: np.ndarray,
    duplicate: Sequence[bool],
    metric: str,
    min_pairs: Iterable[int] = (1,),
) -> dict[int, ThresholdSweep]:
    """left_codes (P, Kq, D), right_codes (P, K, D), duplicate (P,) -> {n: sweep over the P labelled
    pairs}; a pair is relevant when it is marked as a duplicate."""
    ns = sorted(set(min_pairs))
    duplicate = np.asarray(duplicate, dtype=bool)
    scores: dict[int, list[np.ndarray]] = {n: [] for n in ns}
    for rows in _query_chunks(len(left_codes), left_codes.shape[1] * right_codes.shape[1] * left_codes.shape[2]):
        nth = nth_smallest(aligned_pair_distances(left_codes[rows], right_codes[rows], metric), ns)
        for n in ns:
            scores[n].append(nth[n].astype(np.float32))
    return {
        n: ThresholdSweep(np.concatenate(s)[duplicate], np.concatenate(s)[~duplicate], min_pairs=n)
        for n, s in scores.items()
    }


# ------------------------------------------------------------------------------ the top answer
#
# What a desk sees is the first result, if any: the service orders the questions the rule accepts
# by their closest pair distance. For min_pairs n and threshold t, the *top answer* of a query is
# the stored question of smallest closest-pair distance d1 among those whose n-th pair distance dn
# is <= t, and the query is *answered* when there is one. As t grows, questions enter in order of
# dn, and the top changes only when one enters whose d1 is below every d1 before it: these entries
# are the query's *events* (t at which it happens, whether that top is right). Between two events
# nothing a desk sees changes, so the events of all queries give the answered share and the
# precision of the answered tops exactly at every t. (Ties in d1 are broken by the earlier entry;
# the service breaks them by the count of pairs within t, then by id: equal closest-pair distances
# between different questions are the only place the two can differ.)


@dataclass(frozen=True)
class TopAnswerPoint:
    """The top answers at one rule (t, n). Queries are *in scope* when some stored question is a right
    answer for them, *out of scope* otherwise (for those any answer is wrong; no match is right)."""

    threshold: float
    min_pairs: int
    queries: int  # in scope
    answered: int  # in-scope queries whose top result passes the rule
    right: int  # of those, the top result is right
    out_of_scope: int
    out_of_scope_answered: int  # out-of-scope queries that got a (necessarily wrong) answer
    copies: int = 1  # each held-out question counted this many times (pooled draws): bounds count it once

    @property
    def answered_share(self) -> float:
        return self.answered / self.queries if self.queries else 0.0

    @property
    def precision(self) -> float | None:
        """Precision of the answered in-scope tops; None when none is answered."""
        return self.right / self.answered if self.answered else None

    @property
    def out_of_scope_no_match(self) -> float | None:
        """Share of out-of-scope queries that got no match; None without out-of-scope queries."""
        return 1.0 - self.out_of_scope_answered / self.out_of_scope if self.out_of_scope else None

    @property
    def wrong(self) -> int:
        """Every wrong answer a desk sees: wrong in-scope tops and answers to out-of-scope queries."""
        return self.answered - self.right + self.out_of_scope_answered

    @property
    def net(self) -> float:
        """(right answers - wrong answers) / all queries: the calibration objective ("top")."""
        total = self.queries + self.out_of_scope
        return (self.right - self.wrong) / total if total else 0.0

    def precision_bound(self, z: float) -> float | None:
        """The Wilson lower bound of the precision, z standard deviations down."""
        return None if not self.answered else wilson_lower_bound(self.right, self.answered, z, self.copies)

    def as_dict(self) -> dict:
        answered_all = self.answered + self.out_of_scope_answered
        return asdict(self) | {
            "answered_share": self.answered_share,
            "precision": self.precision,
            "right_share": self.right / self.queries if self.queries else 0.0,
            "out_of_scope_no_match": self.out_of_scope_no_match,
            "precision_with_out_of_scope": self.right / answered_all if answered_all else None,
            "net": self.net,
        }


def wilson_lower_bound(successes, trials, z: float, copies: int = 1):
    """Wilson score interval's lower end (arrays or numbers; trials > 0). copies: every observation
    was counted this many times (pooled draws of the same questions): it counts once here."""
    n = np.asarray(trials, dtype=np.float64) / copies
    p = np.asarray(successes, dtype=np.float64) / copies / n
    bound = (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    return float(bound) if bound.ndim == 0 else bound


def top_events(
    nth: np.ndarray, closest: np.ndarray, correct: np.ndarray, first_query: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nth (q, N): the n-th pair distance (the rule's score), closest (q, N): the smallest pair
    distance (the service's order), correct (q, N) bool: a right answer. An infinite nth is never
    accepted. -> (query index, score, right) of every event, per query in increasing score."""
    q = nth.shape[0]
    if nth.shape[1] == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, bool)
    if nth is closest:  # n = 1: the top is the nearest question, from its own distance on
        top = np.argmin(closest, axis=1)
        rows = np.arange(q)
        score, right = closest[rows, top], correct[rows, top]
        keep = np.isfinite(score)
        return rows[keep] + first_query, score[keep].astype(np.float32), right[keep]
    order = np.argsort(nth, axis=1, kind="stable")
    entering = np.take_along_axis(nth, order, axis=1)
    d1 = np.take_along_axis(closest, order, axis=1)
    before = np.minimum.accumulate(d1, axis=1)
    is_event = np.empty(d1.shape, dtype=bool)
    is_event[:, 0] = True
    is_event[:, 1:] = d1[:, 1:] < before[:, :-1]
    is_event &= np.isfinite(entering)
    rows, positions = np.nonzero(is_event)  # row-major: per query, in increasing score
    right = np.take_along_axis(correct, order, axis=1)[rows, positions]
    return rows + first_query, entering[rows, positions].astype(np.float32), right


# The no-match bound counts held-out labels rather than questions once there are this many of them:
# below it a cluster-robust standard error is itself too noisy to bound anything.
MIN_GROUPS_FOR_GROUP_BOUND = 10


class TopAnswerSweep:
    """Exact answered share and precision of the answered tops at every threshold, from the events
    of top_events() (all queries' events, each query's in increasing score, queries in any order)."""

    def __init__(
        self, query: np.ndarray, score: np.ndarray, right: np.ndarray, in_scope: np.ndarray, min_pairs: int = 1,
        copies: int = 1, groups: np.ndarray | None = None,
    ):
        """copies: how many times each held-out question appears among the queries (pooled draws of
        the same questions, `merge_sweeps`): the lower bounds count each question once, since its
        copies are not independent evidence. groups (nq,) int: what each out-of-scope query's fate
        depends on beside itself (its held-out label); with enough groups the no-match bound counts
        groups, not questions (no_match_bound)."""
        self.min_pairs = min_pairs
        self.copies = max(1, int(copies))
        self.in_scope = np.asarray(in_scope, dtype=bool)
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.query = np.asarray(query, dtype=np.int64)
        self.score = np.asarray(score, dtype=np.float32)
        self.right = np.asarray(right, dtype=bool) & self.in_scope[self.query]
        first = np.ones(len(self.query), dtype=bool)
        first[1:] = self.query[1:] != self.query[:-1]
        previous = np.zeros(len(self.query), dtype=np.int64)
        previous[1:] = self.right[:-1]
        previous[first] = 0
        scope = self.in_scope[self.query]
        self._first = first
        order = np.argsort(self.score, kind="stable")
        self._sorted = self.score[order]
        self._answered = np.cumsum((first & scope)[order])
        self._oos_answered = np.cumsum((first & ~scope)[order])
        self._right = np.cumsum((self.right.astype(np.int64) - previous)[order])
        self.candidates = np.unique(self._sorted)
        last = np.searchsorted(self._sorted, self.candidates, side="right") - 1
        self.answered = self._answered[last]
        self.out_of_scope_answered = self._oos_answered[last]
        self.right_answers = self._right[last]
        self._first_scores = self.score[first]
        self._first_queries = self.query[first]

    @property
    def queries(self) -> int:
        return int(self.in_scope.sum())

    @property
    def out_of_scope(self) -> int:
        return int((~self.in_scope).sum())

    @property
    def precision(self) -> np.ndarray:
        """Per candidate; 1 where no in-scope query is answered (no wrong top among them)."""
        return np.where(self.answered > 0, self.right_answers / np.maximum(self.answered, 1), 1.0)

    @property
    def net(self) -> np.ndarray:
        total = max(len(self.in_scope), 1)
        return (2 * self.right_answers - self.answered - self.out_of_scope_answered) / total

    def _counts(self, k: int) -> tuple[int, int, int]:
        if k == 0:
            return 0, 0, 0
        return int(self._answered[k - 1]), int(self._right[k - 1]), int(self._oos_answered[k - 1])

    def at(self, threshold: float, queries: np.ndarray | None = None) -> TopAnswerPoint:
        """The top answers at threshold t (questions whose score is <= t pass); `queries`: only
        these query indices."""
        if queries is None:
            answered, right, oos = self._counts(int(np.searchsorted(self._sorted, threshold, side="right")))
            return TopAnswerPoint(float(threshold), self.min_pairs, self.queries, answered, right, self.out_of_scope, oos,
                                  self.copies)
        chosen = np.zeros(len(self.in_scope), dtype=bool)
        chosen[np.asarray(queries, dtype=np.int64)] = True
        passed = chosen[self.query] & (self.score <= threshold)
        answered_queries = np.unique(self.query[passed])
        # The top at t is the query's last event with score <= t.
        last = {}
        for i in np.flatnonzero(passed):
            last[self.query[i]] = self.right[i]
        scope = self.in_scope[answered_queries]
        return TopAnswerPoint(
            float(threshold), self.min_pairs, int(self.in_scope[chosen].sum()), int(scope.sum()),
            int(sum(bool(last[q]) for q in answered_queries[scope])), int((~self.in_scope[chosen]).sum()),
            int((~scope).sum()), self.copies,
        )

    def _separating_threshold(self, index: int) -> float:
        value = float(self.candidates[index])
        if index + 1 < len(self.candidates):
            return (value + float(self.candidates[index + 1])) / 2.0
        return value + max(abs(value) * 1e-6, 1e-12)

    def point(self, index: int) -> TopAnswerPoint:
        return TopAnswerPoint(
            self._separating_threshold(index), self.min_pairs, self.queries, int(self.answered[index]),
            int(self.right_answers[index]), self.out_of_scope, int(self.out_of_scope_answered[index]), self.copies,
        )

    def precision_bound(self, z: float) -> np.ndarray:
        """Per candidate: the Wilson lower bound of the precision of the answered tops, z standard
        deviations below (z = 0: the precision itself); 0 where nothing in scope is answered."""
        if z == 0:
            return np.where(self.answered > 0, self.precision, 0.0)
        bound = wilson_lower_bound(self.right_answers, np.maximum(self.answered, 1), z, self.copies)
        return np.where(self.answered > 0, bound, 0.0)

    def overall_precision_bound(self, z: float) -> np.ndarray:
        """As precision_bound, over every answer given: answers to out-of-scope queries count wrong."""
        given = self.answered + self.out_of_scope_answered
        if z == 0:
            return np.where(given > 0, self.right_answers / np.maximum(given, 1), 0.0)
        bound = wilson_lower_bound(self.right_answers, np.maximum(given, 1), z, self.copies)
        return np.where(given > 0, bound, 0.0)

    @functools.cached_property
    def out_of_scope_groups(self) -> int:
        """Distinct groups among the out-of-scope queries (0 without groups)."""
        if self.groups is None or self.out_of_scope == 0:
            return 0
        return len(np.unique(self.groups[~self.in_scope]))

    @property
    def no_match_bound_kind(self) -> str:
        """What no_match_bound counts as independent evidence: "groups" or "questions"."""
        return "groups" if self.out_of_scope_groups >= MIN_GROUPS_FOR_GROUP_BOUND else "questions"

    def no_match_bound(self, z: float) -> np.ndarray:
        """Per candidate: the share of out-of-scope queries that get no match, by its lower bound z sd
        down (z = 0: the share itself); 1 where there are no out-of-scope queries. The bound is
        Wilson's over questions, and with at least MIN_GROUPS_FOR_GROUP_BOUND groups the lower of that
        and the group bound (_group_no_match_bound): the questions of one held-out label succeed or
        fail together, so they are not independent evidence of how the next unknown label fares."""
        if self.out_of_scope == 0:
            return np.ones(len(self.candidates))
        silent = self.out_of_scope - self.out_of_scope_answered
        if z == 0:
            return silent / self.out_of_scope
        bound = wilson_lower_bound(silent, self.out_of_scope, z, self.copies)
        if self.no_match_bound_kind == "groups":
            bound = np.minimum(bound, self._group_no_match_bound(z))
        return bound

    def no_match_bound_at(self, threshold: float, z: float) -> float | None:
        """no_match_bound at one threshold; None without out-of-scope queries."""
        if self.out_of_scope == 0:
            return None
        index = int(np.searchsorted(self.candidates, threshold, side="right")) - 1
        if index < 0:  # nothing answered: every out-of-scope query is silent
            return wilson_lower_bound(self.out_of_scope, self.out_of_scope, z, self.copies) if z else 1.0
        return float(self.no_match_bound(z)[index])

    def _group_no_match_bound(self, z: float) -> np.ndarray:
        """The share of out-of-scope queries without a match, less z cluster-robust standard errors
        (the ratio estimator's: the groups are the units, each weighted by its queries), per candidate."""
        share, error = self._group_share_and_error
        return share - z * error

    @functools.cached_property
    def _group_share_and_error(self) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: the out-of-scope no-match share and its cluster-robust standard error (the
        same for every z, so computed once)."""
        out = ~self.in_scope
        names, group_of = np.unique(self.groups[out], return_inverse=True)
        sizes = np.bincount(group_of, minlength=len(names)).astype(np.float64)
        position = np.full(len(self.in_scope), -1, dtype=np.int64)
        position[np.flatnonzero(out)] = group_of
        first_group = position[self._first_queries]
        silent = np.empty((len(self.candidates), len(names)))
        for g in range(len(names)):
            entered = np.sort(self._first_scores[first_group == g])
            silent[:, g] = sizes[g] - np.searchsorted(entered, self.candidates, side="right")
        total = sizes.sum()
        share = silent.sum(axis=1) / total
        residual = silent - share[:, None] * sizes[None, :]
        count = len(names)
        variance = count / (count - 1) * (residual ** 2).sum(axis=1) / total ** 2
        return share, np.sqrt(variance)

    def best(self, target_precision: float | None, z: float = 0.0, min_no_match: float | None = None) -> TopAnswerPoint | None:
        """The largest answered share whose precision over every answer given (answers to
        out-of-scope queries count wrong, so the in-scope precision holds too) is >= target, by its
        Wilson lower bound z standard deviations down when z > 0 (a lucky handful of answers does
        not reach a target); among equals the most net right answers, then the smaller threshold.
        min_no_match: moreover at least this share of the out-of-scope queries gets no match (by
        the same lower bound); ignored without out-of-scope queries.
        With no target (None): the most net right answers (right - wrong), then the larger answered
        share. None when no threshold reaches the target."""
        if len(self.candidates) == 0:
            return None
        index = np.arange(len(self.candidates))
        if target_precision is None:
            ordering = np.lexsort((index, -self.answered, -self.net))
            return self.point(int(index[ordering[0]]))
        feasible = (self.overall_precision_bound(z) >= target_precision - 1e-12) & (self.answered > 0)
        if min_no_match is not None:
            feasible &= self.no_match_bound(z) >= min_no_match - 1e-12
        if not feasible.any():
            return None
        index = np.flatnonzero(feasible)
        # lexsort: the last key is the primary one; the first of the best is taken.
        ordering = np.lexsort((index, -self.net[index], -self.answered[index]))
        return self.point(int(index[ordering[0]]))

    def max_answered_at_precision(self, target: float) -> TopAnswerPoint | None:
        """The largest answered share whose precision of answered tops is >= target."""
        feasible = np.flatnonzero((self.precision >= target - 1e-12) & (self.answered > 0))
        if len(feasible) == 0:
            return None
        return self.point(int(feasible[np.argmax(self.answered[feasible])]))

    def highest_precision(self, z: float = 0.0) -> float:
        """The highest precision over every answer given (its lower bound with z > 0)."""
        answered = self.answered > 0
        return float(self.overall_precision_bound(z)[answered].max()) if answered.any() else 0.0


def rule_sweeps(
    query_codes: np.ndarray,
    stored_codes: np.ndarray,
    metric: str,
    min_pairs: Iterable[int],
    judge,
    in_scope: np.ndarray,
    *,
    pairwise: bool = True,
    tops: bool = True,
    groups: np.ndarray | None = None,
) -> tuple[dict[int, ThresholdSweep], dict[int, TopAnswerSweep]]:
    """One pass over every (query, stored question) pair for both views of the rule.

    judge(rows: slice) -> (relevant, right, usable), each (q, N) bool or None: relevant pairs for the
    pairwise sweep, right top answers, and the pairs that count at all (None: all; a query's own
    text on the stored side is not an answer to it). in_scope (nq,) bool: queries with a right
    answer among the stored questions. groups (nq,) int: see TopAnswerSweep."""
    ns = sorted(set(min_pairs))
    relevant: dict[int, list[np.ndarray]] = {n: [] for n in ns}
    irrelevant: dict[int, list[np.ndarray]] = {n: [] for n in ns}
    events: dict[int, list[tuple]] = {n: [] for n in ns}
    stored = StoredCodes(stored_codes, metric)
    values_per_query = stored_codes.shape[0] * stored_codes.shape[1] * query_codes.shape[1]
    for rows in _query_chunks(len(query_codes), values_per_query):
        distances = stored.distances(query_codes[rows])
        wanted = set(ns) | ({1} if tops else set())
        nth = nth_smallest(distances, sorted(wanted))
        same, right, usable = judge(rows)
        for n in ns:
            scores = nth[n].astype(np.float32)
            if pairwise:
                mask = same if usable is None else same & usable
                relevant[n].append(scores[mask])
                irrelevant[n].append(scores[~same if usable is None else ~same & usable])
            if tops:
                score, closest = nth[n], nth[1]
                if usable is not None:
                    closest = np.where(usable, closest, np.inf)
                    score = closest if n == 1 else np.where(usable, score, np.inf)
                events[n].append(top_events(score, closest, right, rows.start))
    sweeps = {
        n: ThresholdSweep(np.concatenate(relevant[n]), np.concatenate(irrelevant[n]), min_pairs=n)
        for n in ns
    } if pairwise else {}
    answers = {}
    if tops:
        for n in ns:
            parts = events[n]
            answers[n] = TopAnswerSweep(
                np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64),
                np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.float32),
                np.concatenate([p[2] for p in parts]) if parts else np.empty(0, bool),
                in_scope, min_pairs=n, groups=groups,
            )
    return sweeps, answers


def label_judge(query_labels: Sequence[str], stored_labels: Sequence[str]):
    """-> (judge for rule_sweeps, in_scope): relevant = right = the same label. A question without a
    label (None) is relevant to none: an unlabelled query is out of scope, an unlabelled stored
    question a wrong answer."""
    names = {name: i for i, name in enumerate(sorted({x for x in (*query_labels, *stored_labels) if x is not None}))}
    query = np.array([-1 if x is None else names[x] for x in query_labels], dtype=np.int64)
    stored = np.array([-2 if x is None else names[x] for x in stored_labels], dtype=np.int64)

    def judge(rows: slice):
        same = query[rows, None] == stored[None, :]
        return same, same, None

    return judge, np.isin(query, stored)


def labelled_rule_sweeps(
    query_codes: np.ndarray,
    query_labels: Sequence[str],
    stored_codes: np.ndarray,
    stored_labels: Sequence[str],
    metric: str,
    min_pairs: Iterable[int] = (1,),
) -> tuple[dict[int, ThresholdSweep], dict[int, TopAnswerSweep]]:
    """labelled_sweeps() and the top answers of the same pairs, in one pass."""
    judge, in_scope = label_judge(query_labels, stored_labels)
    return rule_sweeps(query_codes, stored_codes, metric, min_pairs, judge, in_scope, groups=label_groups(query_labels))


def label_groups(labels: Sequence[str | None]) -> np.ndarray:
    """Each label's position among the sorted distinct labels, and a group of its own for each
    query without one (-1, -2, ...): the same numbers for the same queries in every draw of held-out
    labels, so pooled draws keep one group per label."""
    names = {name: i for i, name in enumerate(sorted({x for x in labels if x is not None}))}
    return np.array([-(i + 1) if x is None else names[x] for i, x in enumerate(labels)], dtype=np.int64)
