"""Rigorous bounds that keep a float32 search exact against the float64 reference.

Candidates are found with float32 arithmetic (FAISS, on CPU or GPU) in a *search space*: the codes
themselves for 'l2', the codes scaled to unit length for 'cosine' (zero vectors stay at the origin).
Every distance found there is turned into a *lower bound* of the distance the reference computes,
so a question is dropped only when it provably cannot qualify; the survivors are then evaluated
with the reference formula itself. The bounds are deliberately generous: a looser bound costs a few
extra candidates, a bound that is too tight would silently lose matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.search.reference import METRICS

UNIT_ROUNDOFF_32 = 2.0**-24
# GPU kernels (cuBLAS GEMM, fused reductions) make no promise of summation order or of FMA use;
# FAISS disables reduced-precision modes, but we allow 16x the CPU error anyway: it costs nothing.
GPU_UNIT_ROUNDOFF = 2.0**-20
# Absolute floor for float32 underflow in squared distances (subnormal products round to 0).
UNDERFLOW_FLOOR = 1e-30
# The reference computes in float64 from differences: relative error a few 1e-16 for any realistic
# dimension. We shave a far larger margin off every lower bound.
REFERENCE_RELATIVE_MARGIN = 1e-12
# Cosine distance is 1 - cos, so the reference's float64 error is absolute, not relative.
REFERENCE_COSINE_MARGIN = 1e-12
# Largest accepted |code|: keeps squared distances far from float32 overflow (3.4e38) at any dim.
MAX_ABS_CODE = 1e15


# Rows per float64 pass: 4 MiB at D = 128 stays in cache (64k rows at a time made loading a 100k
# index's codes four times slower).
NORM_CHUNK_ROWS = 1 << 12


def _wide_norms(wide: np.ndarray) -> np.ndarray:
    """wide (n, D) float64 C-order -> (n, 1) norms: the one formula the caps' norms and the search
    vectors share (np.linalg.norm's, so the same bits)."""
    return np.sqrt(np.add.reduce(wide * wide, axis=1, keepdims=True))


def row_norms(rows: np.ndarray) -> np.ndarray:
    """rows (n, D) float -> (n,) float64 Euclidean norms, the values np.linalg.norm(rows in float64,
    axis=1) gives for C-order rows (in any layout: numpy sums a row pairwise only in C order),
    computed a cache-sized chunk at a time."""
    norms = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), NORM_CHUNK_ROWS):
        wide = rows[start : start + NORM_CHUNK_ROWS].astype(np.float64, order="C")
        norms[start : start + NORM_CHUNK_ROWS] = _wide_norms(wide)[:, 0]
    return norms


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """rows (n, D) float -> (n, D) float64 rows scaled to unit length in float64 (so tiny nonzero
    float32 rows, whose float32 norm could underflow to 0, stay nonzero); zero rows stay +0. Rows
    must be finite (codes are checked when added, queried and loaded)."""
    wide = rows.astype(np.float64, order="C")
    norms = _wide_norms(wide)
    np.divide(wide, norms, out=wide, where=norms > 0)
    wide[norms[:, 0] == 0] = 0.0
    return wide


@dataclass(frozen=True)
class FloatErrorModel:
    """How far a float32 squared L2 distance |x - y|^2 in `dim` dimensions can be from the exact one,
    whichever way it was computed: from differences (FAISS SIMD kernels) or by the expansion
    |x|^2 + |y|^2 - 2 x.y (BLAS, GPU). For both, the error is at most gamma * (|x| + |y|)^2 with
    gamma = n u / (1 - n u), n = dim + 8 (Higham's bound for a dot product of length dim, plus the
    few roundings that combine the terms); we use twice that."""

    dim: int
    unit_roundoff: float = UNIT_ROUNDOFF_32

    @property
    def gamma(self) -> float:
        nu = (self.dim + 8) * self.unit_roundoff
        return 2.0 * nu / (1.0 - nu)

    def squared_slack(self, query_norms: np.ndarray, stored_max_norm: float | np.ndarray) -> np.ndarray:
        """query_norms (m,) or (m, 1), stored_max_norm scalar or broadcastable -> absolute error bound
        on every float32 squared distance between those queries and any stored vector."""
        total = np.asarray(query_norms, dtype=np.float64) + np.asarray(stored_max_norm, dtype=np.float64)
        return self.gamma * total * total + UNDERFLOW_FLOOR


class SearchGeometry:
    """The metric-specific part: the search-space embedding and the conversion of a search-space
    distance lower bound into a lower bound of the reference distance."""

    def __init__(self, metric: str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        self.metric = metric
        # Unit vectors are rounded to float32 after an exact float64 normalisation: each component is
        # off by at most u relative, so the vector by at most u in norm. We allow 4u.
        self.representation_error = 4.0 * UNIT_ROUNDOFF_32 if metric == "cosine" else 0.0

    def to_search_space(self, codes: np.ndarray) -> np.ndarray:
        """codes (..., D) float32 -> search-space vectors (..., D) float32 (the same array for 'l2')."""
        if self.metric == "l2":
            return codes
        flat = codes.reshape(-1, codes.shape[-1])
        out = np.empty(flat.shape, dtype=np.float32)
        for start in range(0, len(flat), NORM_CHUNK_ROWS):
            out[start : start + NORM_CHUNK_ROWS] = unit_rows(flat[start : start + NORM_CHUNK_ROWS])
        return out.reshape(codes.shape)

    def lower_bound(self, search_distance: np.ndarray | float) -> np.ndarray:
        """A lower bound of the search-space distance between two search-space points (float64,
        not squared) -> a lower bound of the reference distance between the original codes."""
        delta = np.maximum(np.asarray(search_distance, dtype=np.float64), 0.0)
        if self.metric == "l2":
            return delta * (1.0 - REFERENCE_RELATIVE_MARGIN)
        # For unit vectors u, v: 1 - cos = |u - v|^2 / 2. A zero vector is at cosine distance 1 from
        # everything but at most 1 + e from any search-space point, so |u - v|^2 / 2 <= 1 still
        # bounds it from below.
        exact = np.maximum(delta - 2.0 * self.representation_error, 0.0)
        return np.maximum(exact * exact / 2.0 - REFERENCE_COSINE_MARGIN, 0.0)

    def lower_bound_from_squared(self, squared: np.ndarray, slack: np.ndarray | float) -> np.ndarray:
        """float32 squared search-space distances and their error bound -> reference lower bounds."""
        wide = np.asarray(squared, dtype=np.float64) - slack
        return self.lower_bound(np.sqrt(np.maximum(wide, 0.0)))

    def search_radius(self, threshold: float) -> float:
        """A search-space distance r such that a reference distance <= threshold implies a
        search-space distance <= r (for range-based candidate generation)."""
        if math.isinf(threshold):
            return math.inf
        if self.metric == "l2":
            return threshold * (1.0 + 4 * REFERENCE_RELATIVE_MARGIN)
        # Pairs with a zero vector sit at search distance <= 1 + e, at reference distance 1.
        radius = math.sqrt(2.0 * (threshold + REFERENCE_COSINE_MARGIN)) + 2.0 * self.representation_error
        return max(radius, 1.0 + 2.0 * self.representation_error) if threshold >= 1.0 else radius
