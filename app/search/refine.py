"""Filter and refine (the exact evaluation behind every index kind): candidates with lower bounds in, exact matches out.

The engine pulls candidate questions from a source and evaluates them with the reference formula
(`reference.pair_distances`, float64 from differences), cheapest bound first. It stops when no
question left unevaluated can still make the result: either its bound exceeds the threshold (it
cannot have a pair within t), or `limit` matches are known and its bound exceeds the limit-th
distance (it cannot rank in). Comparisons are inclusive, so ties in distance are always evaluated
and ordered by count and id exactly like the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.search.reference import Match, order_matches, pair_distances
from app.search.segment import SegmentView
from app.search.sources import CandidateSource, PreparedQuery

# Candidates evaluated per call: amortises numpy overhead without evaluating far past the cutoff.
MIN_EVALUATION_BATCH = 16
# Pending candidates beyond this many batches are evaluated even before the source's bound allows.
PENDING_LIMIT_BATCHES = 4


@dataclass(frozen=True)
class Rule:
    metric: str
    threshold: float
    min_pairs: int
    limit: int

    @property
    def everything_qualifies(self) -> bool:
        """With t = inf or min_pairs = 0 every question is a match: the search is a ranking."""
        return self.min_pairs == 0 or math.isinf(self.threshold)

    @property
    def pair_count_rule(self) -> tuple[float, int] | None:
        """(threshold, min_pairs) for the block search's count pruning; None for a ranking."""
        return None if self.everything_qualifies else (self.threshold, self.min_pairs)

    @property
    def stop_bound(self) -> float:
        """Questions whose closest pair is beyond this can never qualify."""
        return math.inf if self.everything_qualifies else self.threshold


def evaluate(query: PreparedQuery, view: SegmentView, rows: np.ndarray, rule: Rule) -> list[Match]:
    """The rule, exactly, for question rows (m,) of a segment -> their matches (unordered)."""
    segment = view.segment
    distances = pair_distances(query.codes, segment.codes[rows], rule.metric).reshape(len(rows), -1)
    within = (distances <= rule.threshold).sum(axis=1)
    closest = distances.min(axis=1)
    keep = np.flatnonzero(within >= rule.min_pairs)
    ids = segment.ids[rows]
    return [Match(int(ids[i]), float(closest[i]), int(within[i])) for i in keep]


def collect(
    view: SegmentView, query: PreparedQuery, rule: Rule, source: CandidateSource, best: list[Match]
) -> list[Match]:
    """Merge this segment's matches into `best` (ordered, at most rule.limit) and return the new best."""
    live = view.live
    pending_rows = np.empty(0, dtype=np.int64)
    pending_bounds = np.empty(0, dtype=np.float64)  # kept sorted
    batch = max(rule.limit, MIN_EVALUATION_BATCH)
    while True:
        cutoff = rule.stop_bound
        if len(best) >= rule.limit:
            cutoff = min(cutoff, best[rule.limit - 1].distance)
            # Candidates that can no longer make the result are dropped.
            kept = int(np.searchsorted(pending_bounds, cutoff, side="right"))
            pending_rows, pending_bounds = pending_rows[:kept], pending_bounds[:kept]
        source_bound = source.bound()
        # The source can still hold a question that matters (inf: it is exhausted).
        more = source_bound <= cutoff and source_bound != math.inf
        ready = int(np.searchsorted(pending_bounds, min(source_bound, cutoff), side="right"))
        if ready >= batch or (ready and not more):
            take = min(ready, batch)
        elif len(pending_bounds) >= PENDING_LIMIT_BATCHES * batch:
            # The source's bound is not tight (blocks that do not prune): evaluate the most promising
            # candidates anyway, so that the limit-th distance starts cutting the rest.
            take = batch
        elif more:
            rows, bounds = source.emit(cutoff)
            keep = live[rows] & (bounds <= cutoff)
            if keep.any():
                pending_rows = np.concatenate([pending_rows, rows[keep]])
                pending_bounds = np.concatenate([pending_bounds, bounds[keep]])
                order = np.argsort(pending_bounds, kind="stable")
                pending_rows, pending_bounds = pending_rows[order], pending_bounds[order]
            continue
        else:
            return best
        best = order_matches(best + evaluate(query, view, pending_rows[:take], rule), rule.limit)
        pending_rows, pending_bounds = pending_rows[take:], pending_bounds[take:]
