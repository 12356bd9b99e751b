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
    ns = sorted(set(min_pairs))
    _, codes = np.unique(np.concatenate([np.asarray(query_labels), np.asarray(stored_labels)]), return_inverse=True)
    query_labels, stored_labels = codes[: len(query_labels)], codes[len(query_labels) :]
    relevant: dict[int, list[np.ndarray]] = {n: [] for n in ns}
    irrelevant: dict[int, list[np.ndarray]] = {n: [] for n in ns}
    stored = StoredCodes(stored_codes, metric)
    values_per_query = stored_codes.shape[0] * stored_codes.shape[1] * query_codes.shape[1]
    for rows in _query_chunks(len(query_codes), values_per_query):
        same = query_labels[rows, None] == stored_labels[None, :]  # (q, N)
        nth = nth_smallest(stored.distances(query_codes[rows]), ns)
        for n in ns:
            scores = nth[n].astype(np.float32)
            relevant[n].append(scores[same])
            irrelevant[n].append(scores[~same])
    return {
        n: ThresholdSweep(np.concatenate(relevant[n]), np.concatenate(irrelevant[n]), min_pairs=n) for n in ns
    }


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
