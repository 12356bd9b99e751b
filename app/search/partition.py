"""Blocks of questions with bounding balls: the exact pruning structure of a segment.

A segment's question rows are ordered so that each block is a contiguous run of rows, and every
search-space sample of a block lies within its ball (centre c, radius r). For a query sample q,
|q - c| - r is then a lower bound of its distance to every sample of the block (triangle
inequality), whatever the data: a block whose bound exceeds what the search still needs is never
read. Blocks come from a two-level k-means on question centres (the mean of a question's samples):
a coarse level of about sqrt(blocks) groups, each split into blocks of about `block_questions`.
Groups have balls too, so a search bounds the groups first and only the blocks of the groups it
reaches. The quality of the clustering only affects speed, never the answer.

For the cosine metric the search-space points lie on the unit sphere, and `Caps` (spherical caps
around the same centres, plus one cap per question) bound tighter than the balls; `BlockBounds`
holds what a segment's searches bound with, in the reference metric, built once per segment."""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from app.search.bounds import FloatErrorModel, row_norms
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
    # Groups per sqrt(blocks): more, smaller groups bound tighter (real codes at 100k: 4 leaves
    # 22% of the groups within the threshold, 1 left 61%, which then bounded most blocks).
    group_factor: int = 4

    def __post_init__(self):
        for name in ("block_questions", "cluster_min_questions", "chunk_questions", "kmeans_iterations", "group_factor"):
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
    (about group_factor x sqrt(clusters) coarse ones) so that training and assignment stay cheap at a million questions;
    fine labels are numbered coarse group after coarse group."""
    coarse = max(1, min(clusters, plan.group_factor * math.isqrt(clusters)))
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
    return Balls(centres, row_norms(centres), radii)


# ------------------------------------------------------------------------------ bounding in the metric


def column_max(values: np.ndarray) -> np.ndarray:
    """(n, m) -> (n,) row maxima, column by column (a reduction along a short last axis is ~20x slower)."""
    out = values[:, 0].copy()
    for j in range(1, values.shape[1]):
        np.maximum(out, values[:, j], out=out)
    return out


def ranked_columns(values: np.ndarray, ranks: tuple[int, ...], largest: bool) -> np.ndarray:
    """(n, m) -> (len(ranks), n): for each rank r, every row's r-th largest (or smallest) value,
    from one pass over `values` (the bounds of a search want the first and the `needed`-th)."""
    if ranks == (1,) and largest:
        return column_max(values)[None]
    # A column-by-column insertion into the running top max(ranks): element-wise passes over
    # contiguous rows, several times faster than sorting or partitioning a short last axis.
    keep, worse = (np.maximum, np.minimum) if largest else (np.minimum, np.maximum)
    depth = max(ranks)
    top = [values[:, 0].copy()]
    for j in range(1, values.shape[1]):
        incoming = values[:, j].copy()
        for level in range(len(top)):
            better = keep(top[level], incoming)
            worse(top[level], incoming, out=incoming)
            top[level] = better
        if len(top) < depth:
            top.append(incoming)
    return np.stack([top[rank - 1] for rank in ranks])


def _ranked_per_query(values: np.ndarray, ranks: tuple[int, ...], per_query: int | None, largest: bool) -> np.ndarray:
    """values (b, m) -> (len(ranks), b) ranked over all m columns, or with per_query = Kq over each
    query's Kq consecutive columns -> (len(ranks), m / Kq, b)."""
    if per_query is None:
        return ranked_columns(values, ranks, largest)
    b, m = values.shape
    ranked = ranked_columns(np.ascontiguousarray(values).reshape(b * (m // per_query), per_query), ranks, largest)
    return ranked.reshape(len(ranks), b, m // per_query).transpose(0, 2, 1)


MIN_DIRECTION_NORM = 1e-6


@dataclass(frozen=True)
class Caps:
    """Spherical caps around the balls' centres (cosine metric): for each ball b, a direction c_b
    (the ball's float32 centre, used as it is) and cos_b <= cos of the angle between c_b and the
    direction of every nonzero stored code of the ball, so every such code lies within the angle
    theta_b = arccos(cos_b) of c_b. has_zero: the ball holds a zero code (at cosine distance 1 from
    everything, whatever its direction).

    Why a cap and not the ball: search-space points lie on the unit sphere, ball centres inside it
    (|c| ~ 0.9 for real codes), and |q - c| - r ignores that the points are on the sphere. The cap
    bound uses it: for real codes of the shipped model it reads 1.5x fewer questions than the
    ball bound at the calibrated threshold."""

    directions: np.ndarray  # (b, D) float32
    direction_norms: np.ndarray  # (b,) float64 (1.0 where the direction is zero)
    cos_radius: np.ndarray  # (b,) float64 in [-1, 1]
    sin_radius: np.ndarray  # (b,) float64 = sqrt(1 - cos_radius^2) >= 0
    has_zero: np.ndarray  # (b,) bool

    CHUNK_SAMPLES = 1 << 14

    @classmethod
    def around(
        cls, directions: np.ndarray, flat: np.ndarray, sq_norms: np.ndarray, sample_offsets: np.ndarray,
        errors: FloatErrorModel, representation_error: float,
    ) -> Caps:
        """directions (b, D) float32; flat (N, D) float32 search-space samples (unit vectors, or
        zero for zero codes) with their float32 squared norms sq_norms (N,); cap b holds samples
        flat[sample_offsets[b]:sample_offsets[b+1]].

        Rigour: let s be a nonzero stored code, s^ = s/|s|, x its search vector with
        |x - s^| <= e (the representation error), c a direction. Then
        cos(s^, c) = s^.c/|c| >= x.c/|c| - e, and the float32 dot product fl(x.c) is within
        gamma |x||c| of x.c (Higham's bound for any summation order, `FloatErrorModel.gamma`), so
        cos(s^, c) >= fl(x.c)/|c| - e - gamma (1 + e) (|x| <= 1 + e). The minimum of that over
        the cap's samples, lowered by 1e-12 for the float64 arithmetic that evaluates it (and for
        float32 underflow: at most D 2^-149 absolute, < 1e-36 relative to |c| >= 1e-6), is cos_b.
        A direction shorter than 1e-6 bounds nothing (theta_b = pi)."""
        count = len(sample_offsets) - 1
        norms = row_norms(directions)
        # A direction this short (codes that nearly cancel) is treated as none: float32 products
        # with it could underflow, and such a cap would bound nothing anyway.
        zero_direction = norms < MIN_DIRECTION_NORM
        norms = np.where(zero_direction, 1.0, norms)
        sizes = np.diff(sample_offsets)
        if count and (sizes == sizes[0]).all() and sizes[0] > 0:
            # Caps of equal size (one per question): one vectorised pass, chunk by chunk.
            size, dots_min, zero_any = int(sizes[0]), np.empty(count, dtype=np.float32), np.empty(count, dtype=bool)
            step = max(1, cls.CHUNK_SAMPLES // size)
            for start in range(0, count, step):
                end = min(start + step, count)
                samples = flat[int(sample_offsets[start]) : int(sample_offsets[end])].reshape(end - start, size, -1)
                zero = sq_norms[int(sample_offsets[start]) : int(sample_offsets[end])].reshape(end - start, size) < 0.25
                dots = np.einsum("nkd,nd->nk", samples, directions[start:end])
                dots[zero] = np.inf
                dots_min[start:end] = dots.min(axis=1)
                zero_any[start:end] = zero.any(axis=1)
        else:
            dots_min, zero_any = np.full(count, np.inf, dtype=np.float32), np.zeros(count, dtype=bool)
            for cap in range(count):
                start, end = int(sample_offsets[cap]), int(sample_offsets[cap + 1])
                dots = flat[start:end] @ directions[cap]
                # A normalised nonzero code has squared norm ~1; zero codes stay exactly 0.
                zero = sq_norms[start:end] < 0.25
                if zero.any():
                    zero_any[cap] = True
                    dots = dots[~zero]
                if len(dots):
                    dots_min[cap] = dots.min()
        # Nonzero search vectors are unit vectors rounded to float32: |x| <= 1 + e.
        cos_min = dots_min.astype(np.float64) / norms - representation_error - errors.gamma * (1.0 + representation_error) - 1e-12
        has_zero = zero_any
        # A cap of zero codes only (cos_min = inf) bounds nothing but their distance 1; a zero
        # direction bounds nothing (theta = pi).
        cos_radius = np.clip(np.where(np.isinf(cos_min), 1.0, cos_min), -1.0, 1.0)
        cos_radius[zero_direction] = -1.0
        sin_radius = np.sqrt(np.maximum((1.0 - cos_radius) * (1.0 + cos_radius), 0.0))
        return cls(np.ascontiguousarray(directions), norms, cos_radius, sin_radius, has_zero)

    def lower_bounds(
        self, queries: np.ndarray, query_norms: np.ndarray, errors: FloatErrorModel, representation_error: float,
        rows: np.ndarray | None = None, ranks: tuple[int, ...] = (1,), per_query: int | None = None,
    ) -> np.ndarray:
        """queries (m, D) float32 search vectors with norms (m,) -> (len(ranks), b): for each rank r,
        lower bounds of the cosine distance (the reference's) from the r-th nearest query code
        (1: the nearest) to every stored code of each cap (of the caps `rows` when given). With
        `per_query` = Kq, the m rows are m / Kq queries of Kq codes each, ranked query by query:
        -> (len(ranks), m / Kq, b).

        Proof. For unit vectors angles obey the triangle inequality: with beta the angle between
        the query direction q^ and c, phi <= theta_b that between c and a stored direction s^,
        angle(q^, s^) >= beta - phi >= beta - theta_b. As in `around`,
        cos beta <= a := fl(q.c)/|c| + e + gamma |q|, so beta >= arccos(a) and, cos being
        decreasing on [0, pi], cos(q^, s^) <= cos(max(0, arccos(a) - theta_b)), which is 1 when
        a >= cos_b and a cos_b + sqrt(1 - a^2) sin_b otherwise. The cosine distance 1 - cos(q^, s^)
        is at least 1 minus that, a non-increasing function of a: so the rank-th smallest bound
        over the query samples is that function of the rank-th largest fl(q.c), with the largest
        slack of them all. sqrt(1 - a^2) is computed as sqrt((1 - a)(1 + a)), where one factor is
        exact (Sterbenz), so every float64 step has a relative error of a few 2^-53 and the
        result is off by < 1e-14; we lower it by 2e-12, which also covers the reference's own
        float64 error. Zero codes: a zero query (search vector 0) gives a <= e + 1e-12, so a bound
        <= 1, its distance to everything; a cap holding zero codes is capped at 1, their distance."""
        directions = self.directions if rows is None else self.directions[rows]
        # (b, m) float32: the faster orientation for BLAS here.
        return self.bounds_from_dots(directions @ queries.T, query_norms, errors, representation_error, rows, ranks, per_query)

    def bounds_from_dots(
        self, dots: np.ndarray, query_norms: np.ndarray, errors: FloatErrorModel, representation_error: float,
        rows: np.ndarray | None = None, ranks: tuple[int, ...] = (1,), per_query: int | None = None,
    ) -> np.ndarray:
        """`lower_bounds` from the float32 products dots (b, m) of the caps' directions (those of
        `rows` when given) with the queries, however they were computed (any summation order).
        Several queries share the largest query norm's slack (a looser bound is still a bound)."""
        if rows is None:
            norms, cos_r, sin_r, has_zero = self.direction_norms, self.cos_radius, self.sin_radius, self.has_zero
        else:
            norms, cos_r, sin_r = self.direction_norms[rows], self.cos_radius[rows], self.sin_radius[rows]
            has_zero = self.has_zero[rows]
        nearest = _ranked_per_query(dots, ranks, per_query, largest=True)  # (len(ranks), [queries,] b)
        slack = representation_error + errors.gamma * float(np.max(query_norms)) * (1.0 + 1e-6) + 1e-12
        a = np.clip(nearest.astype(np.float64) / norms + slack, -1.0, 1.0)
        nearest_cos = a * cos_r + np.sqrt((1.0 - a) * (1.0 + a)) * sin_r
        bounds = np.where(a >= cos_r, 0.0, np.maximum(1.0 - nearest_cos - 2e-12, 0.0))
        if has_zero.any():
            bounds = np.where(has_zero, np.minimum(bounds, 1.0), bounds)
        return bounds


class BlockBounds:
    """A segment's groups and blocks bounded in the reference metric: caps for 'cosine', balls for
    'l2'. Built once per segment (it is immutable) and shared by every search of it."""

    def __init__(
        self, partition: Partition, flat: np.ndarray, sq_norms: np.ndarray, samples_per_item: int,
        geometry, errors: FloatErrorModel,
    ):
        self.metric = geometry.metric
        self.geometry = geometry
        self.errors = errors
        self.partition = partition
        self.block_samples = np.diff(partition.offsets) * samples_per_item
        self.group_blocks = np.diff(partition.group_offsets)
        self.representation_error = geometry.representation_error
        if self.metric == "cosine":
            offsets = partition.offsets * samples_per_item
            self.group_caps = Caps.around(
                partition.groups.centres, flat, sq_norms, offsets[partition.group_offsets], errors,
                self.representation_error,
            )
            self.block_caps = Caps.around(partition.blocks.centres, flat, sq_norms, offsets, errors, self.representation_error)
            # One cap per question (around the mean of its codes' directions): bounded before its
            # codes are read, it spares reading most questions of the blocks a search reaches.
            questions = int(partition.offsets[-1])
            means = np.empty((questions, flat.shape[1]), dtype=np.float32)
            step = max(1, self.QUESTION_CHUNK_SAMPLES // samples_per_item)
            for start in range(0, questions, step):
                end = min(start + step, questions)
                means[start:end] = flat[start * samples_per_item : end * samples_per_item].reshape(
                    end - start, samples_per_item, -1
                ).mean(axis=1)
            self.question_caps = Caps.around(
                means, flat, sq_norms, np.arange(questions + 1, dtype=np.int64) * samples_per_item, errors,
                self.representation_error,
            )
        else:
            self.question_caps = None

    QUESTION_CHUNK_SAMPLES = 1 << 16

    def nbytes(self) -> int:
        """Host memory of what this adds to the partition (cap directions of blocks and groups are
        the partition's centres)."""
        if self.metric != "cosine":
            return 0
        total = 0
        for caps in (self.group_caps, self.block_caps, self.question_caps):
            total += caps.direction_norms.nbytes + caps.cos_radius.nbytes + caps.sin_radius.nbytes + caps.has_zero.nbytes
        return total + self.question_caps.directions.nbytes

    def groups(
        self, queries: np.ndarray, query_norms: np.ndarray, ranks: tuple[int, ...] = (1,), per_query: int | None = None
    ) -> np.ndarray:
        """(len(ranks), g) reference-metric lower bounds from the r-th nearest query sample to every
        group's codes, for each rank r; with per_query = Kq, (len(ranks), queries, g) for the
        queries of Kq samples each that `queries` stacks."""
        if self.metric == "cosine":
            return self.group_caps.lower_bounds(
                queries, query_norms, self.errors, self.representation_error, ranks=ranks, per_query=per_query
            )
        return self._ball_bounds(self.partition.groups, queries, query_norms, ranks, per_query)

    def blocks(
        self, queries: np.ndarray, query_norms: np.ndarray, rows: np.ndarray | None = None, ranks: tuple[int, ...] = (1,),
        per_query: int | None = None,
    ) -> np.ndarray:
        """(len(ranks), b) reference-metric lower bounds from the r-th nearest query sample to every
        block's codes (to blocks `rows` when given), for each rank r; per_query as for `groups`."""
        if self.metric == "cosine":
            return self.block_caps.lower_bounds(
                queries, query_norms, self.errors, self.representation_error, rows, ranks, per_query
            )
        balls = self.partition.blocks
        if rows is not None:
            balls = Balls(balls.centres[rows], balls.centre_norms[rows], balls.radii[rows])
        return self._ball_bounds(balls, queries, query_norms, ranks, per_query)

    def _ball_bounds(
        self, balls: Balls, queries: np.ndarray, query_norms: np.ndarray, ranks: tuple[int, ...], per_query: int | None
    ) -> np.ndarray:
        bounds = balls.lower_bounds(queries, query_norms, self.errors)  # (m, b) search space
        return self.geometry.lower_bound(_ranked_per_query(bounds.T, ranks, per_query, largest=False))
