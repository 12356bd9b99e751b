"""Retrieval metrics, as pure functions of ranked ids and labels.

A stored question is *relevant* to a query when it carries the query's label. Definitions used
throughout qsim's reports:

- precision@1: the share of queries whose first result is relevant.
- AP@10 of one query: sum over the ranks i <= 10 holding a relevant result of precision@i, divided
  by min(10, R), R = the number of relevant stored questions in the whole corpus. A query that finds
  every reachable relevant item in the first places scores 1; fewer than 10 results simply
  contribute nothing past their end. MAP@10 is its mean over queries. (Dividing instead by the
  number of relevant items *found* in the top 10 gives much higher figures, e.g. TF-IDF 0.733 and
  BM25 0.800 on BANKING77, and does not reproduce the baselines in data/banking77/README.md;
  dividing by min(10, R) gives 0.481 and 0.589, the README's figures.)
- hit@10: the share of queries with at least one relevant result in the top 10.

Queries with no relevant stored question (R = 0) have no defined AP; they are left out of the three
ranking metrics and counted in `RankingMetrics.queries_without_relevant`.

Ties are broken by the ranker, not here: the metrics read the ranks as given.
`top_k_by_score` is the tie rule the baselines use (higher score first, then lower corpus index),
the same as the index's (smaller distance first, then lower id).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RANK_DEPTH = 10


def top_k_by_score(scores: np.ndarray, k: int) -> np.ndarray:
    """scores (nq, N), higher is better -> (nq, min(k, N)) corpus indices, best first; equal scores
    are ordered by lower index."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    if k == 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    # Partition first (O(N)), then order the k survivors; the partition may split a tie at the
    # k-th place arbitrarily, so take every column tied with the k-th best before ordering.
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    rows = []
    for i in range(scores.shape[0]):
        candidates = np.flatnonzero(scores[i] >= kth[i])
        order = np.lexsort((candidates, -scores[i, candidates]))
        rows.append(candidates[order[:k]])
    return np.asarray(rows, dtype=np.int64).reshape(scores.shape[0], k)


def average_precision_at_k(relevant: Sequence[bool], total_relevant: int, k: int = RANK_DEPTH) -> float:
    """relevant: the relevance of the ranked results (any length; only the first k count);
    total_relevant: relevant items in the corpus (> 0)."""
    if total_relevant <= 0:
        raise ValueError("average precision is undefined for a query with no relevant item")
    hits = 0
    score = 0.0
    for rank, is_relevant in enumerate(list(relevant)[:k], start=1):
        if is_relevant:
            hits += 1
            score += hits / rank
    return score / min(k, total_relevant)


@dataclass(frozen=True)
class RankingMetrics:
    precision_at_1: float
    map_at_10: float
    hit_at_10: float
    queries: int  # queries measured (with at least one relevant stored question)
    queries_without_relevant: int

    def as_dict(self) -> dict:
        return asdict(self)


def ranking_metrics(
    ranked: Sequence[Sequence[int]], corpus_labels: Sequence[str], query_labels: Sequence[str]
) -> RankingMetrics:
    """ranked: per query, corpus indices best first (ragged: fewer than 10 is allowed)."""
    if len(ranked) != len(query_labels):
        raise ValueError(f"{len(ranked)} rankings for {len(query_labels)} queries")
    corpus_labels = np.asarray(corpus_labels)
    relevant_counts = Counter(corpus_labels.tolist())
    p1, ap, hit, measured = 0.0, 0.0, 0.0, 0
    for ids, label in zip(ranked, query_labels, strict=True):
        total = 0 if label is None else relevant_counts.get(label, 0)  # an unlabelled query is not judged
        if total == 0:
            continue
        measured += 1
        relevance = (corpus_labels[np.asarray(ids, dtype=np.int64)[:RANK_DEPTH]] == label).tolist()
        p1 += float(bool(relevance) and relevance[0])
        ap += average_precision_at_k(relevance, total)
        hit += float(any(relevance))
    if measured == 0:
        return RankingMetrics(0.0, 0.0, 0.0, 0, len(query_labels))
    return RankingMetrics(p1 / measured, ap / measured, hit / measured, measured, len(query_labels) - measured)


def f1_score(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class SetMetrics:
    """Micro-averaged quality of the sets a threshold rule returns, over all queries."""

    precision: float
    recall: float
    f1: float
    returned: int  # (query, stored question) pairs returned
    true_positives: int
    relevant: int  # (query, stored question) pairs with the same label

    def as_dict(self) -> dict:
        return asdict(self)


def set_metrics_from_counts(true_positives: int, returned: int, relevant: int) -> SetMetrics:
    precision = true_positives / returned if returned else 1.0
    recall = true_positives / relevant if relevant else 0.0
    return SetMetrics(precision, recall, f1_score(precision, recall), returned, true_positives, relevant)


def set_metrics(
    returned: Sequence[Sequence[int]], corpus_labels: Sequence[str], query_labels: Sequence[str]
) -> SetMetrics:
    """returned: per query, the corpus indices the rule returned (any order, no limit).

    Micro averages over all (query, returned question) pairs: precision = relevant returned / all
    returned, recall = relevant returned / all relevant pairs. A query whose returned set is empty
    adds nothing to precision's denominator and all of its relevant questions to recall's (all
    missed); a query without relevant questions adds every question it returns as a false
    positive. When nothing at all is returned, precision is taken as 1 (no false positive was
    returned) and recall is 0, so F1 is 0.
    """
    if len(returned) != len(query_labels):
        raise ValueError(f"{len(returned)} returned sets for {len(query_labels)} queries")
    corpus_labels = np.asarray(corpus_labels)
    relevant_counts = Counter(corpus_labels.tolist())
    true_positives = n_returned = n_relevant = 0
    for ids, label in zip(returned, query_labels, strict=True):
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        n_returned += len(ids)
        true_positives += int((corpus_labels[ids] == label).sum())
        n_relevant += relevant_counts.get(label, 0)
    return set_metrics_from_counts(true_positives, n_returned, n_relevant)
