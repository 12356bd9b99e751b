"""Hypothesis strategies for index tests: small collections full of the cases that break bounds.

Codes come in styles that make boundaries likely: small integers (exact ties, duplicates, zero
vectors for cosine), clustered floats (many near neighbours), directions at tiny angles and their
antipodes at any magnitude (cosine caps of almost no width), copies and 1-ulp nudges of stored
codes. Thresholds are often an exact pair distance of the reference, or its float neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from app.search import SimilarityIndex
from app.search.reference import METRICS, brute_force_search, pair_distances


@dataclass
class Collection:
    metric: str
    ids: np.ndarray  # (n,) int64
    codes: np.ndarray  # (n, K, D) float32
    queries: np.ndarray  # (nq, Kq, D) float32

    @property
    def dim(self) -> int:
        return self.codes.shape[2]

    @property
    def samples(self) -> int:
        return self.codes.shape[1]


def make_codes(rng: np.random.Generator, style: str, shape: tuple[int, ...]) -> np.ndarray:
    if style == "directions":
        # A few directions with codes at tiny angles around them (caps of almost no width, cosines
        # within float error of 1), some of them reversed (antipodes: cosine distance ~2), at
        # magnitudes from 1e-30 to 1e12 (the cosine metric ignores them, float32 arithmetic does not).
        centres = rng.standard_normal((3, shape[-1]))
        picks = centres[rng.integers(0, 3, size=shape[:-1])] * rng.choice([1.0, -1.0], size=(*shape[:-1], 1))
        spread = rng.choice([0.0, 1e-7, 1e-4, 1e-2])
        magnitude = 10.0 ** rng.integers(-30, 13, size=(*shape[:-1], 1))
        return ((picks + rng.normal(0, spread, size=shape)) * magnitude).astype(np.float32)
    if style == "integers":
        return rng.integers(-2, 3, size=shape).astype(np.float32)
    if style == "clustered":
        centres = rng.normal(0, 3, size=(3, shape[-1]))
        picks = centres[rng.integers(0, 3, size=shape[:-1])]
        return (picks + rng.normal(0, 0.05, size=shape)).astype(np.float32)
    return (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)


def with_copies(rng: np.random.Generator, codes: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Replace some samples by copies of samples in `pool` (n, K, D), exact or nudged by one ulp."""
    flat_pool = pool.reshape(-1, pool.shape[-1])
    if len(flat_pool) == 0:
        return codes
    out = codes.copy()
    flat = out.reshape(-1, out.shape[-1])
    for i in np.flatnonzero(rng.random(len(flat)) < 0.3):
        source = flat_pool[rng.integers(len(flat_pool))]
        flat[i] = source if rng.random() < 0.6 else np.nextafter(source, np.float32(np.inf) * rng.choice([-1, 1]))
    return out


STYLES = ("integers", "floats", "clustered")
# With codes at tiny angles, antipodes and extreme magnitudes (the index's own bounds are tested on them).
ALL_STYLES = (*STYLES, "directions")


@st.composite
def collections(draw, max_questions: int = 40, max_queries: int = 3, styles: tuple[str, ...] = STYLES) -> Collection:
    samples = draw(st.integers(1, 6), label="K")
    query_samples = draw(st.integers(1, 6), label="Kq")
    dim = draw(st.integers(1, 16), label="dim")
    metric = draw(st.sampled_from(METRICS), label="metric")
    style = draw(st.sampled_from(styles), label="style")
    n = draw(st.integers(0, max_questions), label="questions")
    nq = draw(st.integers(1, max_queries), label="queries")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    codes = make_codes(rng, style, (n, samples, dim))
    codes = with_copies(rng, codes, codes)  # duplicate samples within the collection
    queries = with_copies(rng, make_codes(rng, style, (nq, query_samples, dim)), codes)
    ids = rng.choice(np.arange(-1000, 10_000), size=n, replace=False).astype(np.int64)
    return Collection(metric, ids, codes, queries)


@st.composite
def thresholds(draw, collection: Collection) -> float:
    kind = draw(st.sampled_from(["pair", "pair", "next to a pair", "zero", "inf", "any"]), label="threshold")
    if kind == "zero":
        return 0.0
    if kind == "inf":
        return math.inf
    if kind == "any" or len(collection.ids) == 0:
        return draw(st.floats(0, 20, allow_nan=False), label="t")
    distances = np.unique(pair_distances(collection.queries[0], collection.codes, collection.metric))
    value = float(distances[draw(st.integers(0, len(distances) - 1), label="pair")])
    if kind == "next to a pair":
        value = float(np.nextafter(value, draw(st.sampled_from([0.0, math.inf]))))
    return max(value, 0.0)


# Index configurations that exercise every candidate path on tiny data.
index_options = st.one_of(
    st.fixed_dictionaries({
        "strategy": st.sampled_from(["blocks", "blocks", "legacy-blocks"]),
        "cluster_min_questions": st.sampled_from([1, 8, 4096]),
        "block_questions": st.integers(1, 6),
        "group_factor": st.sampled_from([1, 4]),
    }),
    st.fixed_dictionaries({"strategy": st.just("knn"), "knn_max_k": st.integers(1, 12)}),
)


def new_index(collection: Collection, **options) -> SimilarityIndex:
    return SimilarityIndex(
        collection.dim, collection.samples, collection.metric, model_id="0123456789abcdef", device="cpu", **options
    )


def expected(collection: Collection, ids: np.ndarray, codes: np.ndarray, threshold, min_pairs, limit):
    return [
        brute_force_search(q, ids, codes, threshold=threshold, min_pairs=min_pairs, limit=limit, metric=collection.metric)
        for q in collection.queries
    ]
