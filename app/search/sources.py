"""Candidate sources: where the questions a search evaluates come from, with a lower bound on the rest.

A source hands out candidate questions of one segment together with a lower bound of each one's
closest pair distance (in the reference metric), and at any time `bound()`: a lower bound of the
closest pair distance of every question it has not handed out yet. The search engine asks for
more only while that bound could still matter, which is what makes pruning exact.

- BlockSource: the segment's blocks in increasing lower bound (spherical caps for 'cosine', balls
  for 'l2'), with the pairs rule's count pruning; each block is read in full (float32).
- LegacyBlockSource: the previous block search (ball bounds, lazy heap), strategy 'legacy-blocks'.
- KnnSource: k nearest samples of each query sample (GPU flat index, or CPU for tests), k grown
  until the k-th neighbour is beyond what the search needs; past the backend's k limit (2048 on
  GPU) it falls back to a BlockSource on the host copy, so nothing is ever truncated.
- ScannedSource: bounds for every question, computed for a whole batch of queries at once by a
  dense GEMM scan (`dense_question_bounds`), used where the partition cannot prune.
- ApproximateSource: the proposals of an approximate structure, once, then nothing (bound = inf).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.search.bounds import FloatErrorModel, SearchGeometry
from app.search.kernels import inner_products_at, squared_distances, squared_distances_at
from app.search.partition import Balls
from app.search.segment import Segment

EMPTY_ROWS = np.empty(0, dtype=np.int64)
EMPTY_BOUNDS = np.empty(0, dtype=np.float64)


@dataclass(frozen=True)
class PreparedQuery:
    """One query: codes (Kq, D) float32 as given; search (Kq, D) float32 search-space vectors;
    norms (Kq,) float64 of the search vectors."""

    codes: np.ndarray
    search: np.ndarray
    norms: np.ndarray

    @classmethod
    def prepare(cls, codes: np.ndarray, geometry: SearchGeometry) -> PreparedQuery:
        search = np.ascontiguousarray(geometry.to_search_space(codes))
        return cls(codes, search, np.sqrt(np.einsum("ij,ij->i", search, search, dtype=np.float64)))


class CandidateSource(Protocol):
    def bound(self) -> float:
        """Lower bound of the closest pair distance of every question not yet emitted (inf: none left)."""

    def emit(self, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows (m,) int64 question rows of the segment, lower bounds (m,) float64). Only called
        while bound() <= cutoff is finite; each call makes progress. `cutoff` tells the source how
        far ahead it may usefully read."""


class KnnBackend(Protocol):
    max_k: int
    errors: FloatErrorModel

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (m, D) float32 -> (squared distances (m, k) float32, sample rows (m, k) int64, -1 padded)."""


def question_lower_bounds(
    squared: np.ndarray, samples_per_item: int, slack: np.ndarray, geometry: SearchGeometry
) -> np.ndarray:
    """squared (Kq, n * K) float32 distances from each query sample to n questions' samples,
    slack (Kq,) their error bounds -> (n,) lower bounds of each question's closest pair distance."""
    # One slack for all query samples (the largest) lets the minimum over query samples run first,
    # over contiguous rows, and the minimum over a question's K samples on a Kq-times smaller array.
    nearest = squared.min(axis=0)
    per_question = nearest[0::samples_per_item].copy()
    for j in range(1, samples_per_item):
        np.minimum(per_question, nearest[j::samples_per_item], out=per_question)
    wide = per_question.astype(np.float64) - float(np.max(slack))
    return geometry.lower_bound(np.sqrt(np.maximum(wide, 0.0)))


class BlockSource:
    """Blocks in increasing lower bound, in the reference metric (caps for 'cosine', balls for 'l2',
    see `partition.BlockBounds`).

    Groups are bounded first; every group within the cutoff is expanded at once (one matrix
    product bounds all of their blocks), or, while nothing bounds the search (a ranking with no
    limit-th distance yet), the nearest group only. Unread blocks are kept sorted by bound, so
    `bound()` (the smaller of the next group's and the next block's) is a lower bound of everything
    unread. Each emit reads blocks within the cutoff up to a sample budget that doubles from wave
    to wave, with the SIMD kernel; for cosine, each question's own cap is bounded first and only
    the questions within the cutoff are read.

    The pairs rule prunes beyond the closest pair (rule = (threshold, min_pairs), when given):

    - Groups, blocks and question caps. A question's pairs within t number sum_i c_i, where
      c_i <= K counts its codes within t of query sample i; c_i = 0 when query sample i's bound
      to the block exceeds t. So a block holds a question with >= min_pairs pairs only if at
      least ceil(min_pairs / K) query samples have a bound <= t, i.e. if the ceil(min_pairs / K)-th
      smallest of the query samples' bounds is <= t; otherwise the block cannot hold a match and
      is never read (its bound is infinite). (With the shipped rule, 5 of 25 with K = 5, that is
      one query sample: the closest-pair bound itself.)
    - Questions. After a read, a pair can be within t only if its float32 squared search-space
      distance is <= r^2 + slack (r = `SearchGeometry.search_radius(t)`, slack its error bound);
      a question with fewer than min_pairs such pairs cannot qualify and is not handed out.

    Neither applies when every question qualifies (min_pairs = 0 or t = inf)."""

    FIRST_WAVE_SAMPLES = 4096
    MAX_WAVE_SAMPLES = 1 << 16
    # Above this share of a segment's blocks, an expansion bounds all of them in one product.
    ALL_BLOCKS_SHARE = 0.5

    def __init__(
        self,
        segment: Segment,
        query: PreparedQuery,
        geometry: SearchGeometry,
        errors: FloatErrorModel,
        skip: np.ndarray | None = None,
        rule: tuple[float, int] | None = None,
        bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        """bounds: this query's (group bounds (g,), bounds of every block (b,)), combined as
        `_combine` does, when they were computed for a batch of queries at once (`batch_bounds`)."""
        self.segment = segment
        self.query = query
        self.geometry = geometry
        self.errors = errors
        self.skip = skip
        self.structure = segment.block_bounds(geometry, errors)
        threshold, min_pairs = rule if rule is not None else (math.inf, 0)
        self.counting = min_pairs > 0 and not math.isinf(threshold)
        self.threshold = threshold
        self.min_pairs = min_pairs
        self.needed, _ = self.needed_samples(rule, segment.samples_per_item)
        if self.counting:
            radius = geometry.search_radius(threshold)
            self.pair_limit = radius * radius * (1.0 + 1e-12)
        self.all_block_bounds = None if bounds is None else bounds[1]
        if bounds is None:
            group_bounds = self._combine(lambda ranks: self.structure.groups(query.search, query.norms, ranks))
        else:
            group_bounds = bounds[0]
        self.group_order = np.argsort(group_bounds, kind="stable")
        self.group_sorted = group_bounds[self.group_order]
        self.group_next = 0
        self.block_ids = EMPTY_ROWS
        self.block_sorted = EMPTY_BOUNDS
        self.block_next = 0
        self.budget = self.FIRST_WAVE_SAMPLES
        # The share of the segment within reach decides whether a dense scan would be cheaper.
        self.reach = threshold if self.counting else 0.0
        self._expand(self.reach)

    def _combine(self, bounds) -> np.ndarray:
        """bounds(ranks) -> (len(ranks), b) bounds of the r-th nearest query sample for each rank r
        -> (b,) the closest-pair bound, infinite where fewer than `needed` query samples are within
        the threshold (see the class docstring). Both ranks come from one pass."""
        return combine_ranks(bounds, self.needed, self.threshold)

    @staticmethod
    def needed_samples(rule: tuple[float, int] | None, samples_per_item: int) -> tuple[int, float]:
        """-> (query samples that must reach a block for it to hold a match, the threshold)."""
        threshold, min_pairs = rule if rule is not None else (math.inf, 0)
        counting = min_pairs > 0 and not math.isinf(threshold)
        return (-(-min_pairs // samples_per_item) if counting else 1), threshold

    def within_reach_share(self) -> float:
        """The share of the segment's questions in blocks whose bound is within the threshold (0 when
        every question qualifies: only the limit prunes then)."""
        end = int(np.searchsorted(self.block_sorted, self.reach, side="right"))
        samples = self.structure.block_samples[self.block_ids[:end]]
        return float(samples.sum()) / max(1, self.segment.size * self.segment.samples_per_item)

    def bound(self) -> float:
        group = self.group_sorted[self.group_next] if self.group_next < len(self.group_sorted) else math.inf
        block = self.block_sorted[self.block_next] if self.block_next < len(self.block_sorted) else math.inf
        return float(min(group, block))

    def _expand(self, reach: float) -> None:
        """Bound the blocks of every unexpanded group whose bound is <= reach (at least the next one)."""
        start = self.group_next
        if start >= len(self.group_sorted) or self.group_sorted[start] == math.inf:
            self.group_next = len(self.group_sorted)
            return
        end = max(start + 1, int(np.searchsorted(self.group_sorted, reach, side="right")))
        self.group_next = end
        groups = self.group_order[start:end]
        partition = self.segment.partition
        counts = self.structure.group_blocks[groups]
        total = int(counts.sum())
        if total == 0:
            return
        first = partition.group_offsets[groups]
        blocks = np.arange(total, dtype=np.int64) + np.repeat(first - (np.cumsum(counts) - counts), counts)
        search, norms = self.query.search, self.query.norms
        if self.all_block_bounds is not None:
            bounds = self.all_block_bounds[blocks]
        elif total >= self.ALL_BLOCKS_SHARE * partition.block_count:
            bounds = self._combine(lambda ranks: self.structure.blocks(search, norms, ranks=ranks)[:, blocks])
        else:
            bounds = self._combine(lambda ranks: self.structure.blocks(search, norms, blocks, ranks))
        # A block's codes are its group's too: the group's bound holds for them as well.
        bounds = np.maximum(bounds, np.repeat(self.group_sorted[start:end], counts))
        ids = np.concatenate([self.block_ids[self.block_next :], blocks])
        all_bounds = np.concatenate([self.block_sorted[self.block_next :], bounds])
        order = np.argsort(all_bounds, kind="stable")
        self.block_ids, self.block_sorted, self.block_next = ids[order], all_bounds[order], 0

    def emit(self, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        while self.group_next < len(self.group_sorted):
            group = self.group_sorted[self.group_next]
            block = self.block_sorted[self.block_next] if self.block_next < len(self.block_sorted) else math.inf
            if group > cutoff or group > block:
                break
            # Everything within a finite cutoff at once; while unbounded, the nearest group only.
            self._expand(cutoff if not math.isinf(cutoff) else group)
        start = self.block_next
        end = int(np.searchsorted(self.block_sorted[start:], cutoff, side="right")) + start
        if end == start:
            return EMPTY_ROWS, EMPTY_BOUNDS  # only groups were expanded: the bound has moved
        samples = np.cumsum(self.structure.block_samples[self.block_ids[start:end]])
        end = start + max(1, int(np.searchsorted(samples, self.budget, side="right")))
        self.block_next = end
        self.budget = min(2 * self.budget, self.MAX_WAVE_SAMPLES)
        return self._read(np.sort(self.block_ids[start:end]), cutoff)

    def _read(self, blocks: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        """Read sorted blocks: bounds of their questions from float32 squared distances (the SIMD
        kernel, from differences; its error is within the slack). With question caps (cosine),
        the questions are bounded by their caps first and only those within the cutoff are read:
        the cutoff never grows during a search (it is the threshold, then the limit-th distance
        found so far, across segments too), so a question beyond it now can never matter."""
        segment = self.segment
        offsets, k = segment.partition.offsets, segment.samples_per_item
        breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
        run_starts = offsets[blocks[np.concatenate([[0], breaks])]]
        run_ends = offsets[blocks[np.concatenate([breaks, [len(blocks)]]) - 1] + 1]
        lengths = run_ends - run_starts
        rows = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(run_starts - (np.cumsum(lengths) - lengths), lengths)
        search_t = self.query.search.T
        spans = list(zip(run_starts.tolist(), run_ends.tolist(), strict=True))
        caps = self.structure.question_caps
        floor = None
        if self.skip is not None:
            fresh = ~self.skip[rows]
            if not fresh.all():
                rows = rows[fresh]
                spans = None
                if not len(rows):
                    return EMPTY_ROWS, EMPTY_BOUNDS
        if caps is not None and not math.isinf(cutoff):
            directions = caps.directions
            if spans is not None and len(spans) == 1:
                dots = directions[spans[0][0] : spans[0][1]] @ search_t
            else:  # scattered rows: read in place, one call
                dots = inner_products_at(self.query.search, directions, rows).T
            norms = self.query.norms
            floor = self._combine(
                lambda ranks: caps.bounds_from_dots(dots, norms, self.errors, self.structure.representation_error, rows, ranks)
            )
            near = floor <= cutoff
            if not near.all():
                rows, floor, spans = rows[near], floor[near], None
            if not len(rows):
                return EMPTY_ROWS, EMPTY_BOUNDS
        search = self.query.search
        if spans is not None and len(spans) == 1:
            squared = squared_distances(search, segment.flat_vectors[spans[0][0] * k : spans[0][1] * k])
        else:  # scattered rows: their samples read in place, one call -> (Kq, samples)
            sample_rows = (rows[:, None] * k + np.arange(k)).reshape(-1)
            squared = squared_distances_at(search, segment.flat_vectors, sample_rows)
        slack = self.errors.squared_slack(self.query.norms, segment.partition.max_norms[blocks].max())
        bounds = question_lower_bounds(squared, k, slack, self.geometry)
        if floor is not None:
            bounds = np.maximum(bounds, floor)  # both are lower bounds
        if self.counting:
            limit = _float32_at_least(self.pair_limit + float(slack.max()))
            within = (squared <= limit).sum(axis=0, dtype=np.int16)
            keep = within.reshape(-1, k).sum(axis=1) >= self.min_pairs
            rows, bounds = rows[keep], bounds[keep]
        return rows, bounds


def combine_ranks(bounds, needed: int, threshold: float) -> np.ndarray:
    """bounds(ranks) -> (len(ranks), ...) -> (...): the nearest query sample's bound, infinite where
    the `needed`-th nearest one's is beyond `threshold` (BlockSource's count pruning)."""
    if needed == 1:
        return bounds((1,))[0]
    closest, needed_bound = bounds((1, needed))
    return np.where(needed_bound > threshold, math.inf, closest)


def batch_bounds(
    segment: Segment, queries: list[PreparedQuery], geometry: SearchGeometry, errors: FloatErrorModel,
    rule: tuple[float, int] | None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every query's (group bounds (g,), block bounds (b,)) as BlockSource combines them, for a batch
    of queries of Kq samples each with one product per level: per query, this is most of what a
    source costs before it reads anything."""
    structure = segment.block_bounds(geometry, errors)
    per_query = queries[0].search.shape[0]
    stacked = np.concatenate([query.search for query in queries])
    norms = np.concatenate([query.norms for query in queries])
    needed, threshold = BlockSource.needed_samples(rule, segment.samples_per_item)
    groups = combine_ranks(lambda ranks: structure.groups(stacked, norms, ranks, per_query), needed, threshold)
    blocks = combine_ranks(lambda ranks: structure.blocks(stacked, norms, ranks=ranks, per_query=per_query), needed, threshold)
    return list(zip(groups, blocks, strict=True))


def _float32_at_least(value: float) -> np.float32:
    """The smallest float32 >= value (so a float32 comparison with it never drops what value keeps)."""
    rounded = np.float32(value)
    return rounded if float(rounded) >= value else np.nextafter(rounded, np.float32(np.inf))


class LegacyBlockSource:
    """The previous block search (strategy 'legacy-blocks', kept for A/B benchmarks): blocks in
    (roughly) increasing ball bound, groups expanded lazily one heap pop at a time, each run of
    blocks read by the SIMD kernel once per query sample.

    A min-heap holds unexpanded groups (keyed by the group's ball bound) and expanded groups
    (keyed by the bound of their next unread block; their blocks sorted by bound). The heap top
    is therefore a lower bound of everything unread. Each emit reads blocks within the cutoff up
    to a sample budget that doubles from wave to wave: few Python round trips when nothing can be
    pruned, little over-reading when most can."""

    FIRST_WAVE_SAMPLES = 4096
    MAX_WAVE_SAMPLES = 1 << 16

    def __init__(
        self,
        segment: Segment,
        query: PreparedQuery,
        geometry: SearchGeometry,
        errors: FloatErrorModel,
        skip: np.ndarray | None = None,
    ):
        self.segment = segment
        self.query = query
        self.geometry = geometry
        self.errors = errors
        self.skip = skip
        partition = segment.partition
        group_bounds = geometry.lower_bound(partition.groups.lower_bounds(query.search, query.norms, errors).min(axis=0))
        # (bound, group, position in the group's sorted blocks; -1: not expanded yet)
        self.heap = [(float(bound), group, -1) for group, bound in enumerate(group_bounds)]
        heapq.heapify(self.heap)
        self.expanded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # group -> (blocks, bounds) sorted
        self.block_samples = np.diff(partition.offsets) * segment.samples_per_item
        self.budget = self.FIRST_WAVE_SAMPLES

    def bound(self) -> float:
        return self.heap[0][0] if self.heap else math.inf

    def emit(self, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        chosen, samples = [], 0
        while self.heap and self.heap[0][0] <= cutoff and (not chosen or samples < self.budget):
            bound, group, position = heapq.heappop(self.heap)
            if position < 0:
                # Groups tied at the top (a query inside many balls: noise-like codes) are expanded
                # together, in one vectorised pass.
                groups = [group]
                while self.heap and self.heap[0][2] < 0 and self.heap[0][0] <= bound:
                    groups.append(heapq.heappop(self.heap)[1])
                self._expand(groups, bound)
                continue
            blocks, bounds = self.expanded[group]
            # Take this group's next blocks within the cutoff and the remaining budget.
            end = int(np.searchsorted(bounds, cutoff, side="right"))
            room = np.cumsum(self.block_samples[blocks[position:end]]) <= max(self.budget - samples, 1)
            end = position + max(1, int(room.sum()))
            chosen.append(blocks[position:end])
            samples += int(self.block_samples[blocks[position:end]].sum())
            if end < len(blocks):
                heapq.heappush(self.heap, (float(bounds[end]), group, end))
        self.budget = min(2 * self.budget, self.MAX_WAVE_SAMPLES)
        if not chosen:
            return EMPTY_ROWS, EMPTY_BOUNDS  # only groups were expanded: the bound has moved
        return self._read(np.sort(np.concatenate(chosen)))

    def _expand(self, groups: list[int], group_bound: float) -> None:
        """Bound the blocks of `groups` (all with bound `group_bound`) and put them on the heap."""
        partition = self.segment.partition
        starts, ends = partition.group_offsets[groups], partition.group_offsets[np.asarray(groups) + 1]
        blocks = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
        balls = partition.blocks
        centres = Balls(balls.centres[blocks], balls.centre_norms[blocks], balls.radii[blocks])
        distances = centres.lower_bounds(self.query.search, self.query.norms, self.errors)
        all_bounds = np.maximum(self.geometry.lower_bound(distances.min(axis=0)), group_bound)
        position = 0
        for group, start, end in zip(groups, starts, ends, strict=True):
            bounds = all_bounds[position : position + end - start]
            position += end - start
            order = np.argsort(bounds, kind="stable")
            self.expanded[group] = (order + start, bounds[order])
            heapq.heappush(self.heap, (float(bounds[order[0]]), group, 0))

    def _read(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read sorted blocks: squared distances of every sample to every query sample."""
        offsets, k = self.segment.partition.offsets, self.segment.samples_per_item
        # Consecutive blocks are adjacent rows: one kernel call per run and query sample.
        breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
        run_starts = offsets[blocks[np.concatenate([[0], breaks])]]
        run_ends = offsets[blocks[np.concatenate([breaks, [len(blocks)]]) - 1] + 1]
        vectors = self.segment.flat_vectors
        squared = np.concatenate(
            [squared_distances(self.query.search, vectors[a * k : b * k]) for a, b in zip(run_starts, run_ends, strict=True)],
            axis=1,
        )
        slack = self.errors.squared_slack(self.query.norms, self.segment.partition.max_norms[blocks].max())
        bounds = question_lower_bounds(squared, k, slack, self.geometry)
        lengths = run_ends - run_starts
        rows = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(run_starts - (np.cumsum(lengths) - lengths), lengths)
        if self.skip is not None:
            fresh = ~self.skip[rows]
            rows, bounds = rows[fresh], bounds[fresh]
        return rows, bounds


class KnnSource:
    """k-NN with growing k. After a round with k, a query sample's unreturned samples are at least
    as far as its k-th neighbour, so every question not returned by any query sample is at least
    min over query samples of that distance away: the bound after the round."""

    def __init__(
        self,
        segment: Segment,
        query: PreparedQuery,
        geometry: SearchGeometry,
        backend: KnnBackend,
        first_k: int,
        host_errors: FloatErrorModel,
        first_round: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.segment = segment
        self.query = query
        self.geometry = geometry
        self.backend = backend
        self.host_errors = host_errors
        self.k = max(1, min(first_k, backend.max_k))
        self.first_round = first_round
        self.round_bound = 0.0
        self.rounds = 0
        self.emitted = EMPTY_ROWS  # sorted question rows handed out so far
        self.fallback: BlockSource | None = None

    def bound(self) -> float:
        if self.fallback is not None:
            return max(self.round_bound, self.fallback.bound())
        return self.round_bound

    def emit(self, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        if self.fallback is not None:
            return self.fallback.emit(cutoff)
        if self.rounds > 0:
            if self.k >= self.backend.max_k:
                # The backend cannot select more neighbours: read the rest exactly on the host.
                skip = np.zeros(self.segment.size, dtype=bool)
                skip[self.emitted] = True
                self.fallback = BlockSource(self.segment, self.query, self.geometry, self.host_errors, skip)
                return self.fallback.emit(cutoff)
            self.k = min(4 * self.k, self.backend.max_k)
        return self._round()

    def _round(self) -> tuple[np.ndarray, np.ndarray]:
        total = self.segment.flat_vectors.shape[0]
        if self.first_round is not None and self.rounds == 0:
            squared, labels = self.first_round
        else:
            squared, labels = self.backend.knn(self.query.search, min(self.k, total))
        k = squared.shape[1]
        self.rounds += 1
        slack = self.backend.errors.squared_slack(self.query.norms, self.segment.max_norm)
        wide = squared.astype(np.float64) - slack[:, None]
        pair_bounds = self.geometry.lower_bound(np.sqrt(np.maximum(wide, 0.0)))
        # A query sample whose k-th label is -1 (or k covers the segment) got every sample back.
        exhausted = (labels[:, -1] < 0) | (k >= total)
        self.round_bound = float(np.where(exhausted, math.inf, pair_bounds[:, -1]).min())
        valid = labels >= 0
        rows = labels[valid] // self.segment.samples_per_item
        bounds = pair_bounds[valid]
        if len(rows) == 0:
            return EMPTY_ROWS, EMPTY_BOUNDS
        order = np.lexsort((bounds, rows))
        rows, bounds = rows[order], bounds[order]
        first = np.concatenate([[True], rows[1:] != rows[:-1]])
        rows, bounds = rows[first], np.minimum(bounds[first], self.round_bound)
        if len(self.emitted):
            fresh = ~np.isin(rows, self.emitted, assume_unique=True)
            rows, bounds = rows[fresh], bounds[fresh]
        self.emitted = np.union1d(self.emitted, rows)
        return rows, bounds


class ApproximateSource:
    """Proposals of an approximate structure; their distances are evaluated exactly like any other."""

    def __init__(self, segment: Segment, query: PreparedQuery, squared_radius: float, ranking_k: int):
        self.segment = segment
        self.query = query
        self.squared_radius = squared_radius
        self.ranking_k = ranking_k
        self.done = False

    def bound(self) -> float:
        return math.inf if self.done else 0.0

    def emit(self, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        self.done = True
        samples = self.segment.approximate.candidate_samples(self.query.search, self.squared_radius, self.ranking_k)
        rows = np.unique(samples // self.segment.samples_per_item)
        # Their bounds are unknown (the structure may have skipped their closest pair): evaluate all.
        return rows, np.zeros(len(rows), dtype=np.float64)


class ScannedSource:
    """Questions of a segment with precomputed lower bounds (every question, or the `rows` given):
    emits those within the cutoff, or (no cutoff yet) the most promising ones first."""

    FIRST_EMIT = 64

    def __init__(self, bounds: np.ndarray, rows: np.ndarray | None = None):
        self.rows = np.arange(len(bounds), dtype=np.int64) if rows is None else rows
        self.bounds = bounds
        self.smallest = float(bounds.min()) if len(bounds) else math.inf

    def bound(self) -> float:
        return self.smallest

    def emit(self, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
        if math.isinf(cutoff):
            count = min(self.FIRST_EMIT, len(self.bounds))
            take = np.argpartition(self.bounds, count - 1)[:count] if count < len(self.bounds) else np.arange(count)
        else:
            take = np.flatnonzero(self.bounds <= cutoff)
        rows, bounds = self.rows[take], self.bounds[take]
        rest = np.ones(len(self.bounds), dtype=bool)
        rest[take] = False
        self.rows, self.bounds = self.rows[rest], self.bounds[rest]
        self.smallest = float(self.bounds.min()) if len(self.bounds) else math.inf
        return rows, bounds


def dense_question_bounds(
    segment: Segment, queries: list[PreparedQuery], geometry: SearchGeometry, errors: FloatErrorModel,
    wave_questions: int = 8192,
) -> np.ndarray:
    """Lower bounds of every question's closest pair distance for a batch of queries of equal Kq,
    -> (nq, n) float64. One GEMM per wave reads each stored sample once for all query samples, with
    squared distances by the expansion |q|^2 + |x|^2 - 2 q.x (its float32 error is in the slack)."""
    stacked = np.concatenate([q.search for q in queries])  # (nq * Kq, D)
    nq, kq, k = len(queries), len(queries[0].search), segment.samples_per_item
    query_sq_norms = np.einsum("ij,ij->i", stacked, stacked)
    slack = errors.squared_slack(np.array([q.norms.max() for q in queries]), segment.max_norm)
    out = np.empty((nq, segment.size), dtype=np.float64)
    for start in range(0, segment.size, wave_questions):
        end = min(start + wave_questions, segment.size)
        samples = segment.flat_vectors[start * k : end * k]
        squared = stacked @ samples.T  # (nq * Kq, s)
        squared *= -2.0
        squared += query_sq_norms[:, None]
        squared += segment.sample_sq_norms[None, start * k : end * k]
        per_query = squared.reshape(nq, kq, -1).min(axis=1)  # (nq, s)
        nearest = per_query[:, 0::k].copy()
        for j in range(1, k):
            np.minimum(nearest, per_query[:, j::k], out=nearest)
        wide = nearest.astype(np.float64) - slack[:, None]
        out[:, start:end] = geometry.lower_bound(np.sqrt(np.maximum(wide, 0.0)))
    return out


def subset_source(
    segment: Segment, rows: np.ndarray, query: PreparedQuery, geometry: SearchGeometry, errors: FloatErrorModel
) -> ScannedSource:
    """A source over only `rows` (m,) of a segment (the questions a filter keeps): their lower
    bounds from one read of just their samples, so a selective filter costs the size of what it
    keeps, not of the segment."""
    k = segment.samples_per_item
    samples = np.ascontiguousarray(segment.vectors[rows].reshape(-1, segment.vectors.shape[-1]))
    squared = squared_distances(query.search, samples)
    slack = errors.squared_slack(query.norms, segment.max_norm)
    return ScannedSource(question_lower_bounds(squared, k, slack, geometry), rows)
