"""The similarity rule, evaluated by brute force in float64: the judge every index must agree with.

A stored question q has K codes; a query has Kq codes. Over the Kq x K pairs (query code, stored
code), count those whose distance is at most the threshold t and take the smallest distance. q is a
match when the count is at least `min_pairs` (1: "any of the 25 pairs"). Matches are ordered by
smallest distance, then by count (more first), then by id, and cut at `limit`. A threshold of
infinity makes every question a match, so the result is the `limit` nearest questions.

Distances: Euclidean ('l2'), or cosine distance 1 - cos ('cosine', for the vMF latent; a zero
vector is at distance 1 from everything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Metric = Literal["l2", "cosine"]
METRICS: tuple[str, ...] = ("l2", "cosine")


@dataclass(frozen=True, slots=True)
class Match:
    id: int
    distance: float  # the smallest pair distance
    pairs_within: int  # pairs at distance <= threshold


def pair_distances(query: np.ndarray, stored: np.ndarray, metric: Metric) -> np.ndarray:
    """query (Kq, D), stored (N, K, D) -> distances (N, Kq, K), float64, computed from differences
    (not from the expansion |a|^2 + |b|^2 - 2ab, which loses precision near zero)."""
    q = np.asarray(query, dtype=np.float64)
    s = np.asarray(stored, dtype=np.float64)
    if metric == "l2":
        return np.sqrt(((q[None, :, None, :] - s[:, None, :, :]) ** 2).sum(-1))
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=-1)
        sn = np.linalg.norm(s, axis=-1)
        dots = np.einsum("id,nkd->nik", q, s)
        denominator = qn[None, :, None] * sn[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = np.where(denominator > 0, dots / np.where(denominator > 0, denominator, 1.0), 0.0)
        return 1.0 - np.clip(cosine, -1.0, 1.0)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def order_matches(matches: list[Match], limit: int) -> list[Match]:
    return sorted(matches, key=lambda m: (m.distance, -m.pairs_within, m.id))[:limit]


def brute_force_search(
    query: np.ndarray,
    ids: np.ndarray,
    stored: np.ndarray,
    *,
    threshold: float,
    min_pairs: int = 1,
    limit: int = 10,
    metric: Metric = "l2",
) -> list[Match]:
    """query (Kq, D); ids (N,); stored (N, K, D) -> the matches of the rule, ordered and cut at limit."""
    if len(ids) == 0:
        return []
    distances = pair_distances(query, stored, metric).reshape(len(ids), -1)  # (N, Kq*K)
    within = (distances <= threshold).sum(axis=1)
    closest = distances.min(axis=1)
    keep = np.flatnonzero(within >= min_pairs)
    matches = [Match(int(ids[i]), float(closest[i]), int(within[i])) for i in keep]
    return order_matches(matches, limit)
