"""Blocks of questions with bounding balls: the exact pruning structure of a segment.

A segment's question rows are ordered so that each block is a contiguous run of rows, and every
search-space sample of a block lies within its ball (centre c, radius r). For a query sample q,
|q - c| - r is then a lower bound of its distance to every sample of the block (triangle
inequality), whatever the data: a block whose bound exceeds what the search still needs is never
read. Blocks come from a two-level k-means on question centres (the mean of a question's samples):
a coarse level of about sqrt(blocks) groups, each split into blocks of about `block_questions`.
Groups have balls too, so a search bounds the groups first and only the blocks of the groups it
reaches. The quality of the clustering only affects speed, never the answer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from app.search.bounds import FloatErrorModel
from app.search.kernels import single_threaded_faiss, squared_distances, squared_distances_to


@dataclass(frozen=True)
class Balls:
    """b balls: centres (b, D) float32, centre_norms (b,) float64, radii (b,) float64 rounded up."""

    centres: np.ndarray
    centre_norms: np.ndarray
    radii: np.ndarray

    def lower_bounds(self, queries: np.ndarray, query_norms: np.ndarray, errors: FloatErrorModel) -> np.ndarray:
        """queries (m, D) float32 search space, query_norms (m,) -> (m, b) lower bounds of the
        search-space distance from each query to every point of each ball: |q - c| - r, with
        |q - c| computed in float32 and lowered by its error bound."""
        squared = squared_distances(queries, self.centres).astype(np.float64)
        squared -= errors.squared_slack(query_norms[:, None], self.centre_norms[None, :])
        return np.maximum(np.sqrt(np.maximum(squared, 0.0)) - self.radii[None, :], 0.0)

    def take(self, indices: slice) -> Balls:
        return Balls(self.centres[indices], self.centre_norms[indices], self.radii[indices])


@dataclass(frozen=True)
class Partition:
    """Two levels of bounding balls over a segment's question rows.

    offsets (b + 1,) int64: block b is question rows offsets[b]:offsets[b+1]; blocks (b balls):
    every search-space sample of block b lies in its ball; max_norms (b,) float64: the largest
    sample norm per block (for error bounds). group_offsets (g + 1,) int64: group j is blocks
    group_offsets[j]:group_offsets[j+1]; groups (g balls) contain all samples of their blocks, so a
    search bounds the ~sqrt(b) groups first and only the blocks of groups it reaches."""

    offsets: np.ndarray
    blocks: Balls
    max_norms: np.ndarray
    group_offsets: np.ndarray
    groups: Balls

    @property
    def block_count(self) -> int:
        return len(self.max_norms)

    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays().values())

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "offsets": self.offsets, "centres": self.blocks.centres, "centre_norms": self.blocks.centre_norms,
            "radii": self.blocks.radii, "max_norms": self.max_norms, "group_offsets": self.group_offsets,
            "group_centres": self.groups.centres, "group_centre_norms": self.groups.centre_norms,
            "group_radii": self.groups.radii,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Partition:
        return cls(
            offsets=arrays["offsets"],
            blocks=Balls(arrays["centres"], arrays["centre_norms"], arrays["radii"]),
            max_norms=arrays["max_norms"],
            group_offsets=arrays["group_offsets"],
            groups=Balls(arrays["group_centres"], arrays["group_centre_norms"], arrays["group_radii"]),
        )

    def block_lower_bounds(
        self, queries: np.ndarray, query_norms: np.ndarray, errors: FloatErrorModel, reach: float
    ) -> np.ndarray:
        """(m, b) search-space lower bounds to every block, computing block balls only for groups
        whose own bound is within `reach` (the others keep their group's bound, > reach)."""
        group_bounds = self.groups.lower_bounds(queries, query_norms, errors)
        bounds = np.repeat(group_bounds, np.diff(self.group_offsets), axis=1)
        for group in np.flatnonzero(group_bounds.min(axis=0) <= reach):
            blocks = slice(self.group_offsets[group], self.group_offsets[group + 1])
            bounds[:, blocks] = np.maximum(bounds[:, blocks], self.blocks.take(blocks).lower_bounds(queries, query_norms, errors))
        return bounds


@dataclass(frozen=True)
class PartitionPlan:
    """How a segment is cut into blocks. Segments below `cluster_min_questions` keep insertion order
    in runs of `chunk_questions`; larger ones are clustered into blocks of about `block_questions`."""

    block_questions: int = 48
    cluster_min_questions: int = 4096
    chunk_questions: int = 256
    kmeans_iterations: int = 8
    seed: int = 1234

    def __post_init__(self):
        for name in ("block_questions", "cluster_min_questions", "chunk_questions", "kmeans_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def order_rows(vectors: np.ndarray, plan: PartitionPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vectors (n, K, D) float32 search space -> (order (n,) int64 row permutation, offsets (b+1,),
    groups (b,) non-decreasing group of each block) such that rows order[offsets[b]:offsets[b+1]]
    form block b."""
    n = len(vectors)
    if n < plan.cluster_min_questions:
        offsets = _chunk_offsets(0, n, plan.chunk_questions)
        blocks = len(offsets) - 1
        return np.arange(n, dtype=np.int64), offsets, np.arange(blocks) // max(1, math.isqrt(blocks))
    centres = np.ascontiguousarray(vectors.mean(axis=1, dtype=np.float64).astype(np.float32))
    labels, coarse = _two_level_kmeans(centres, max(1, round(n / plan.block_questions)), plan)
    order = np.argsort(labels, kind="stable").astype(np.int64)
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [n]])
    # k-means can make a few huge clusters (duplicates, outliers): cut them into runs so that a
    # block read stays small.
    limit = 4 * plan.block_questions
    offsets = np.concatenate([_chunk_offsets(s, e, limit)[:-1] for s, e in zip(starts, ends, strict=True)] + [[n]])
    # Fine labels are numbered group after group, so a group's blocks are consecutive.
    return order, offsets.astype(np.int64), coarse[order[offsets[:-1]]]


def _chunk_offsets(start: int, end: int, size: int) -> np.ndarray:
    return np.unique(np.concatenate([np.arange(start, end, size), [end]])).astype(np.int64)


def _two_level_kmeans(points: np.ndarray, clusters: int, plan: PartitionPlan) -> tuple[np.ndarray, np.ndarray]:
    """points (n, D) float32 -> (labels (n,) int64 in [0, clusters'), coarse labels (n,)). Two levels
    (about sqrt(clusters) each) so that training and assignment stay cheap at a million questions;
    fine labels are numbered coarse group after coarse group."""
    coarse = max(1, min(clusters, math.isqrt(clusters)))
    top = _kmeans_labels(points, coarse, plan)
    labels = np.empty(len(points), dtype=np.int64)
    next_label = 0
    for group in range(coarse):
        members = np.flatnonzero(top == group)
        if len(members) == 0:
            continue
        share = max(1, round(clusters * len(members) / len(points)))
        sub = _kmeans_labels(np.ascontiguousarray(points[members]), share, plan)
        labels[members] = sub + next_label
        next_label += int(sub.max()) + 1
    return labels, top


def _kmeans_labels(points: np.ndarray, k: int, plan: PartitionPlan) -> np.ndarray:
    k = min(k, len(points))
    if k <= 1:
        return np.zeros(len(points), dtype=np.int64)
    if len(points) * k <= TINY_KMEANS_WORK:
        return _lloyd(points, k, plan)
    kmeans = faiss.Kmeans(
        points.shape[1], k, niter=plan.kmeans_iterations, seed=plan.seed, max_points_per_centroid=64,
        min_points_per_centroid=1, verbose=False,
    )
    if len(points) * k <= SMALL_KMEANS_WORK:
        # The many small second-level problems: OpenMP start-up would cost more than the work.
        with single_threaded_faiss():
            kmeans.train(points)
            _, labels = kmeans.index.search(points, 1)
    else:
        kmeans.train(points)
        _, labels = kmeans.index.search(points, 1)
    return labels[:, 0].astype(np.int64)


# Below TINY, plain numpy (no FAISS warnings about too few training points); below SMALL, FAISS
# on one thread.
TINY_KMEANS_WORK = 1 << 12
SMALL_KMEANS_WORK = 1 << 24


def _lloyd(points: np.ndarray, k: int, plan: PartitionPlan) -> np.ndarray:
    """points (n, D) float32 -> labels (n,) int64 from a few Lloyd iterations."""
    rng = np.random.default_rng(plan.seed)
    centroids = points[rng.choice(len(points), k, replace=False)].astype(np.float64)
    points = points.astype(np.float64)
    point_norms = np.einsum("ij,ij->i", points, points)
    for _ in range(plan.kmeans_iterations + 1):
        squared = point_norms[:, None] - 2.0 * points @ centroids.T + np.einsum("ij,ij->i", centroids, centroids)
        labels = squared.argmin(axis=1)
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(points[order], starts, axis=0)
        centroids = centroids.copy()
        centroids[present] = sums / np.diff(np.append(starts, len(labels)))[:, None]
    return labels.astype(np.int64)


def build_partition(
    vectors: np.ndarray, offsets: np.ndarray, block_groups: np.ndarray, errors: FloatErrorModel
) -> Partition:
    """vectors (n, K, D) float32 search space in block order; offsets (b+1,); block_groups (b,)
    non-decreasing -> the two levels of balls."""
    n, k, dim = vectors.shape
    flat = vectors.reshape(n * k, dim)
    blocks = len(offsets) - 1
    max_norms = np.empty(blocks, dtype=np.float64)
    for b in range(blocks):
        samples = flat[offsets[b] * k : offsets[b + 1] * k]
        max_norms[b] = float(np.sqrt(np.einsum("ij,ij->i", samples, samples, dtype=np.float64).max()))
    group_offsets = np.searchsorted(block_groups, np.unique(block_groups)).astype(np.int64)
    group_offsets = np.append(group_offsets, blocks) if blocks else np.zeros(1, dtype=np.int64)
    return Partition(
        offsets=offsets.astype(np.int64),
        blocks=_balls(flat, offsets * k, max_norms, errors),
        max_norms=max_norms,
        group_offsets=group_offsets,
        groups=_balls(flat, offsets[group_offsets] * k, np.maximum.reduceat(max_norms, group_offsets[:-1]) if blocks else max_norms, errors),
    )


def _balls(flat: np.ndarray, sample_offsets: np.ndarray, max_norms: np.ndarray, errors: FloatErrorModel) -> Balls:
    """Balls around consecutive runs of samples flat[sample_offsets[i]:sample_offsets[i+1]]."""
    count, dim = len(sample_offsets) - 1, flat.shape[1]
    centres = np.empty((count, dim), dtype=np.float32)
    radii = np.empty(count, dtype=np.float64)
    for i in range(count):
        samples = flat[sample_offsets[i] : sample_offsets[i + 1]]
        # Any point works as a centre: the float32 mean.
        centres[i] = samples.mean(axis=0, dtype=np.float64)
        squared = squared_distances_to(centres[i], samples)
        slack = errors.squared_slack(np.linalg.norm(centres[i].astype(np.float64)), max_norms[i])
        radii[i] = math.sqrt(float(squared.max()) + float(slack)) * (1.0 + 1e-9)
    return Balls(centres, np.linalg.norm(centres.astype(np.float64), axis=1), radii)
