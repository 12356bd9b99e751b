"""Filtered searches (`allowed` ids) answer exactly what the brute-force reference answers over the
questions that pass, whatever the selectivity: on the subset path (only the allowed questions'
codes are read), on the masked path (the usual sources, the rest masked out), across segments and
deletions, and on every candidate strategy."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.search.reference import brute_force_search
from tests.search.cases import ALL_STYLES, collections, index_options, new_index, thresholds

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(collection, keep: np.ndarray, threshold, min_pairs, limit):
    rows = np.flatnonzero(np.isin(collection.ids, keep))
    return [
        brute_force_search(
            q, collection.ids[rows], collection.codes[rows], threshold=threshold, min_pairs=min_pairs, limit=limit,
            metric=collection.metric,
        )
        for q in collection.queries
    ]


@FAST
@given(
    data=st.data(),
    collection=collections(max_questions=60, styles=ALL_STYLES),
    options=index_options,
    path=st.sampled_from(["subset", "masked", "auto"]),
)
def test_filtered_search_equals_the_reference_over_the_allowed_questions(data, collection, options, path):
    index = new_index(collection, background_merges=False, merge_floor_questions=4, **options)
    n = len(collection.ids)
    # Several segments (writes in pieces), and deletions that the filter must not resurrect.
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3), label="cuts"))
    for start, end in zip([0, *cuts], [*cuts, n], strict=True):
        if end > start:
            index.add(collection.ids[start:end], collection.codes[start:end])
    picks = data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=5, unique=True), label="deleted")
    deleted = collection.ids[picks] if n else []
    index.remove(np.asarray(deleted, dtype=np.int64))
    share = data.draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]), label="share")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    allowed = collection.ids[rng.random(n) < share] if n else np.empty(0, dtype=np.int64)
    # Ids that are not stored (never, or deleted) may be allowed too: they match nothing.
    allowed = np.concatenate([allowed, np.asarray(deleted, dtype=np.int64), np.array([10**9], dtype=np.int64)])
    threshold = data.draw(thresholds(collection))
    min_pairs = data.draw(st.integers(0, collection.samples * collection.queries.shape[1] + 1), label="min_pairs")
    limit = data.draw(st.integers(0, 12), label="limit")
    limits = {"subset": (10**9, 1.0), "masked": (-1, -1.0), "auto": (4096, 0.05)}[path]
    with patch.multiple("app.search.index", SUBSET_MAX_QUESTIONS=limits[0], SUBSET_MAX_FRACTION=limits[1]):
        got = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=limit, allowed=allowed)
    keep = np.setdiff1d(allowed, np.asarray(deleted, dtype=np.int64))
    assert got == reference(collection, keep, threshold, min_pairs, limit)


def test_a_filter_keeping_3_of_20000_still_returns_them():
    rng = np.random.default_rng(5)
    ids = np.arange(20_000, dtype=np.int64)
    codes = rng.standard_normal((20_000, 5, 16)).astype(np.float32)
    from app.search import SimilarityIndex

    index = SimilarityIndex(16, 5, "l2", model_id="filtertest", device="cpu")
    index.add(ids, codes)
    keep = np.array([17, 9_001, 19_999])
    query = codes[[4242]]
    got = index.search(query, threshold=math.inf, limit=10, allowed=keep)[0]
    assert sorted(m.id for m in got) == keep.tolist()
    expected = brute_force_search(query[0], keep, codes[keep], threshold=math.inf, limit=10)
    assert got == expected
    # Unfiltered, the query's own question comes first; filtered, it is not allowed.
    assert index.search(query, threshold=math.inf, limit=1)[0][0].id == 4242


def test_an_empty_filter_matches_nothing():
    from app.search import SimilarityIndex

    index = SimilarityIndex(4, 2, "cosine", model_id="filtertest", device="cpu")
    index.add(np.arange(5), np.ones((5, 2, 4), dtype=np.float32))
    assert index.search(np.ones((1, 2, 4), dtype=np.float32), threshold=math.inf, allowed=[]) == [[]]


def test_selective_filters_at_100k_are_exact_and_no_slower_than_the_unfiltered_search():
    """100k questions, filters keeping 1% and 0.01%: the answer is the reference's over the subset
    (ranking and a tight threshold), and a filtered search costs no more than an unfiltered one
    (measured side by side, medians of 30 queries, with slack for a busy machine)."""
    import time

    from app.search import SimilarityIndex
    from bench.synthetic import SHAPES, CodeGenerator

    generator = CodeGenerator(SHAPES["separated"], dim=64, samples=5, seed=0)
    codes = generator.codes(100_000, stream=1)
    ids = np.arange(1, 100_001, dtype=np.int64)
    queries = generator.codes(30, stream=2)
    index = SimilarityIndex(64, 5, "l2", model_id="filter100k", device="cpu", background_merges=False)
    index.add(ids, codes)
    rng = np.random.default_rng(1)

    def median_ms(allowed, threshold):
        times = []
        for q in queries:
            started = time.perf_counter()
            index.search(q[None], threshold=threshold, limit=10, allowed=allowed)
            times.append(time.perf_counter() - started)
        return 1000 * float(np.median(times))

    unfiltered = median_ms(None, 1.25)
    for share in (0.01, 0.0001):
        allowed = np.sort(rng.choice(ids, round(share * len(ids)), replace=False))
        rows = allowed - 1
        for threshold in (1.25, math.inf):
            got = index.search(queries[:5], threshold=threshold, limit=10, allowed=allowed)
            expected = [brute_force_search(q, allowed, codes[rows], threshold=threshold, limit=10) for q in queries[:5]]
            assert got == expected
        assert all(len(m) == min(10, len(allowed)) for m in index.search(queries[:5], threshold=math.inf, allowed=allowed))
        assert median_ms(allowed, 1.25) <= 2 * unfiltered + 10, (share, unfiltered)
