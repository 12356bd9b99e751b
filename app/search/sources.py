"""Candidate sources: where the questions a search evaluates come from, with a lower bound on the rest.

A source hands out candidate questions of one segment together with a lower bound of each one's
closest pair distance (in the reference metric), and at any time `bound()`: a lower bound of the
closest pair distance of every question it has not handed out yet. The search engine asks for
more only while that bound could still matter, which is what makes pruning exact.

- BlockSource: the segment's blocks in increasing ball bound; each block is read in full (float32).
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
from app.search.kernels import squared_distances
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
    """Blocks in (roughly) increasing ball bound, groups expanded lazily.

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
