"""Immutable segments and their copy-on-write views.

A `Segment` is a batch of questions written once: ids, codes, their search-space vectors in block
order, the ball partition, and optionally an approximate FAISS structure and a GPU copy. Nothing in
it changes after construction, so any number of readers can use it without locks. Deletions live in
a `SegmentView`: the segment plus a boolean mask of live rows, replaced (copied, one byte per
question) when a write deletes some of them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from app.search.approximate import ApproximateIndex, ApproximateSpec
from app.search.bounds import FloatErrorModel, SearchGeometry
from app.search.partition import BlockBounds, Partition, PartitionPlan, build_partition, order_rows


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class Segment:
    """n questions with K codes each, in block order. ids (n,) int64; codes (n, K, D) float32;
    vectors (n, K, D) float32 search space (the same array as codes for 'l2')."""

    def __init__(
        self,
        ids: np.ndarray,
        codes: np.ndarray,
        vectors: np.ndarray,
        partition: Partition,
        approximate: ApproximateIndex | None = None,
        name: str | None = None,
    ):
        self.name = name or uuid.uuid4().hex
        self.ids = _frozen(ids)
        self.codes = _frozen(codes)
        self.vectors = vectors if vectors is codes else _frozen(vectors)
        self.flat_vectors = self.vectors.reshape(-1, self.vectors.shape[-1])
        # Squared norms of the search-space samples, for GEMM-based scans. (n * K,) float32
        self.sample_sq_norms = _frozen(np.einsum("ij,ij->i", self.flat_vectors, self.flat_vectors, dtype=np.float64).astype(np.float32))
        self.partition = partition
        self.approximate = approximate
        self.max_norm = float(partition.max_norms.max()) if partition.block_count else 0.0
        order = np.argsort(ids, kind="stable")
        self._sorted_ids = _frozen(ids[order])
        self._sorted_rows = _frozen(order.astype(np.int64))
        # Device-side copies (GPU) attached by the index; not part of the persisted data.
        self.accelerator = None
        # Query-independent bounding structures (caps for cosine), derived from the data above.
        self._block_bounds: BlockBounds | None = None

    def block_bounds(self, geometry: SearchGeometry, errors: FloatErrorModel) -> BlockBounds:
        """The groups' and blocks' bounds in the index's metric, built once: by the writer before the
        segment is published (`SimilarityIndex`), or else by the first reader (a concurrent one
        may build an identical copy; either is kept)."""
        cached = self._block_bounds
        if cached is None or cached.metric != geometry.metric or cached.errors != errors:
            cached = BlockBounds(self.partition, self.flat_vectors, self.sample_sq_norms, self.samples_per_item, geometry, errors)
            self._block_bounds = cached
        return cached

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        codes: np.ndarray,
        geometry: SearchGeometry,
        errors: FloatErrorModel,
        plan: PartitionPlan,
        approximate: ApproximateSpec | None = None,
    ) -> Segment:
        """ids (n,) int64 unique, codes (n, K, D) float32 finite -> a segment in block order."""
        vectors = geometry.to_search_space(codes)
        order, offsets, block_groups = order_rows(vectors, plan)
        ids = np.ascontiguousarray(ids[order])
        codes = np.ascontiguousarray(codes[order])
        vectors = codes if geometry.metric == "l2" else np.ascontiguousarray(vectors[order])
        partition = build_partition(vectors, offsets, block_groups, errors)
        structure = None
        if approximate is not None and approximate.applies_to(len(ids)):
            structure = approximate.build(vectors.reshape(-1, vectors.shape[-1]))
        return cls(ids, codes, vectors, partition, structure)

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def samples_per_item(self) -> int:
        return self.codes.shape[1]

    def rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids (m,) -> (found (m,) bool, rows (found.sum(),) int64) for the ids stored here."""
        if self.size == 0 or len(ids) == 0:
            return np.zeros(len(ids), dtype=bool), np.empty(0, dtype=np.int64)
        positions = np.minimum(np.searchsorted(self._sorted_ids, ids), self.size - 1)
        found = self._sorted_ids[positions] == ids
        return found, self._sorted_rows[positions[found]]

    def nbytes(self) -> int:
        arrays = [self.ids, self.codes, self._sorted_ids, self._sorted_rows, self.sample_sq_norms]
        if self.vectors is not self.codes:
            arrays.append(self.vectors)
        total = sum(a.nbytes for a in arrays) + self.partition.nbytes()
        if self._block_bounds is not None:
            total += self._block_bounds.nbytes()
        if self.approximate is not None:
            total += self.approximate.nbytes()
        return total


@dataclass(frozen=True)
class SegmentView:
    """A segment and which of its rows are live. live (n,) bool, read-only."""

    segment: Segment
    live: np.ndarray
    live_count: int = field(default=-1)

    def __post_init__(self):
        _frozen(self.live)
        if self.live_count < 0:
            object.__setattr__(self, "live_count", int(self.live.sum()))

    @classmethod
    def all_live(cls, segment: Segment) -> SegmentView:
        return cls(segment, np.ones(segment.size, dtype=bool), segment.size)

    def without_rows(self, rows: np.ndarray) -> SegmentView:
        """A new view with `rows` (live ones) marked deleted; this view is unchanged."""
        live = self.live.copy()
        live[rows] = False
        return SegmentView(self.segment, live)

    def live_ids(self) -> np.ndarray:
        return self.segment.ids[self.live]

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live_count / self.segment.size if self.segment.size else 0.0
