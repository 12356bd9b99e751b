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
from tests.search.cases import collections, index_options, new_index, thresholds

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
    collection=collections(max_questions=60),
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
