"""The exact index answers exactly what the brute-force reference answers: same ids, same order,
same pair counts, bit-equal distances, on every candidate path (ball blocks, clustered blocks, and
the GPU's k-NN strategy with a k limit so small that it must fall back)."""

import math
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.search import Match, SimilarityIndex
from app.search.reference import brute_force_search
from tests.search.cases import ALL_STYLES, collections, expected, index_options, new_index, thresholds

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(data=st.data(), collection=collections(styles=ALL_STYLES), options=index_options)
def test_search_equals_the_reference(data, collection, options):
    index = new_index(collection, **options)
    index.add(collection.ids, collection.codes)
    threshold = data.draw(thresholds(collection))
    min_pairs = data.draw(st.integers(0, collection.samples * collection.queries.shape[1] + 1), label="min_pairs")
    limit = data.draw(st.integers(0, 12), label="limit")
    got = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=limit)
    assert got == expected(collection, collection.ids, collection.codes, threshold, min_pairs, limit)


@FAST
@given(data=st.data(), collection=collections(max_queries=8, styles=ALL_STYLES))
def test_a_batch_of_queries_gets_what_each_query_gets_alone(data, collection):
    """The service micro-batches concurrent questions: a batch bounds its queries' groups and blocks
    together (one product per level), which must not change any query's answer."""
    index = new_index(collection, strategy="blocks", block_questions=data.draw(st.integers(1, 4)))
    index.add(collection.ids, collection.codes)
    threshold = data.draw(thresholds(collection))
    min_pairs = data.draw(st.integers(0, collection.samples * collection.queries.shape[1]), label="min_pairs")
    together = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=10)
    alone = [index.search(query[None], threshold=threshold, min_pairs=min_pairs, limit=10)[0] for query in collection.queries]
    assert together == alone
    assert together == expected(collection, collection.ids, collection.codes, threshold, min_pairs, 10)


@FAST
@given(collection=collections(max_questions=60, styles=ALL_STYLES), options=index_options, limit=st.integers(1, 15))
def test_infinite_threshold_ranks_the_nearest_questions(collection, options, limit):
    index = new_index(collection, **options)
    index.add(collection.ids, collection.codes)
    got = index.search(collection.queries, threshold=math.inf, limit=limit)
    assert got == expected(collection, collection.ids, collection.codes, math.inf, 1, limit)


@FAST
@given(data=st.data(), collection=collections(max_queries=6, styles=ALL_STYLES))
def test_batched_dense_scans_equal_the_reference(data, collection):
    """Batches on segments the partition cannot prune are scanned by GEMM; here every batch is."""
    with patch.multiple("app.search.index", DENSE_MIN_QUERIES=1, DENSE_MIN_QUESTIONS=1, DENSE_MIN_READ_FRACTION=0.0):
        index = new_index(collection, strategy="blocks")
        index.add(collection.ids, collection.codes)
        threshold = data.draw(thresholds(collection))
        min_pairs = data.draw(st.integers(0, 3), label="min_pairs")
        limit = data.draw(st.integers(0, 12), label="limit")
        got = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=limit)
    assert got == expected(collection, collection.ids, collection.codes, threshold, min_pairs, limit)


def test_thousands_of_samples_within_the_threshold_beyond_the_gpu_k_limit():
    """3000 questions (15000 samples) all within t of every query sample: the k-NN strategy hits
    its 2048 limit and must fall back to the exact host scan instead of truncating."""
    rng = np.random.default_rng(3)
    ids = np.arange(3000, dtype=np.int64)
    codes = (rng.standard_normal((3000, 5, 16)) * 0.01).astype(np.float32)
    queries = (rng.standard_normal((2, 5, 16)) * 0.01).astype(np.float32)
    for options in ({"strategy": "knn"}, {"strategy": "knn", "knn_max_k": 64}, {"strategy": "blocks"}):
        index = SimilarityIndex(16, 5, "l2", model_id="m", device="cpu", **options)
        index.add(ids, codes)
        got = index.search(queries, threshold=1.0, min_pairs=25, limit=3000)
        assert [len(r) for r in got] == [3000, 3000]
        assert got[0] == brute_force_search(queries[0], ids, codes, threshold=1.0, min_pairs=25, limit=3000)


def test_cosine_zero_vectors_are_at_distance_one_from_everything():
    index = SimilarityIndex(2, 1, "cosine", model_id="m", device="cpu")
    index.add(np.array([1, 2, 3]), np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 3.0]]], dtype=np.float32))
    zero_query = np.zeros((1, 1, 2), dtype=np.float32)
    assert index.search(zero_query, threshold=1.0) == [[Match(1, 1.0, 1), Match(2, 1.0, 1), Match(3, 1.0, 1)]]
    assert index.search(zero_query, threshold=0.999) == [[]]
    assert index.search(np.array([[[2.0, 0.0]]], dtype=np.float32), threshold=0.5) == [[Match(2, 0.0, 1)]]


def test_queries_may_have_a_different_number_of_samples():
    index = SimilarityIndex(3, 4, model_id="m", device="cpu")
    index.add(np.array([5]), np.ones((1, 4, 3), dtype=np.float32))
    result = index.search(np.ones((1, 2, 3), dtype=np.float32), threshold=0.0)
    assert result == [[Match(5, 0.0, 8)]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.search(np.zeros((1, 2, 4)), threshold=1.0), "dimension 4"),
        (lambda i: i.search(np.zeros((2, 3)), threshold=1.0), "3-D"),
        (lambda i: i.search(np.full((1, 1, 3), np.nan), threshold=1.0), "NaN"),
        (lambda i: i.search(np.zeros((1, 1, 3)), threshold=-1.0), "non-negative"),
        (lambda i: i.search(np.zeros((1, 1, 3)), threshold=math.nan), "non-negative"),
        (lambda i: i.search(np.zeros((1, 1, 3)), threshold=1.0, limit=-1), "limit"),
        (lambda i: i.search(np.zeros((1, 1, 3)), threshold=1.0, min_pairs=-2), "min_pairs"),
        (lambda i: i.search(np.zeros((1, 0, 3)), threshold=1.0), "at least one sample"),
        (lambda i: i.search(np.array([[["a", "b", "c"]]]), threshold=1.0), "real numbers"),
    ],
)
def test_bad_search_input_is_refused_with_a_clear_error(call, message):
    index = SimilarityIndex(3, 2, model_id="m", device="cpu")
    with pytest.raises(ValueError, match=message):
        call(index)


def test_empty_index_and_empty_batches():
    index = SimilarityIndex(3, 2, model_id="m", device="cpu")
    assert index.search(np.zeros((2, 2, 3), dtype=np.float32), threshold=math.inf) == [[], []]
    index.add(np.array([1]), np.zeros((1, 2, 3), dtype=np.float32))
    assert index.search(np.zeros((0, 2, 3), dtype=np.float32), threshold=1.0) == []


def test_a_lone_query_whose_threshold_reaches_the_whole_segment_is_scanned_densely():
    """A wide threshold (compared with the spread of the codes) would read every block one by one;
    one GEMM scan does it faster, with the same exact answer. A narrow one keeps the blocks."""
    from app.search import index as index_module

    rng = np.random.default_rng(5)
    ids = np.arange(1, 6001, dtype=np.int64)
    centres = rng.standard_normal((120, 16)) * 10.0  # 120 tight clusters of 50 questions
    codes = (np.repeat(centres, 50, axis=0)[:, None, :] + rng.standard_normal((6000, 5, 16)) * 0.1).astype(np.float32)
    query = (centres[7] + rng.standard_normal((1, 5, 16)) * 0.1).astype(np.float32)
    index = SimilarityIndex(16, 5, model_id="dense-test", strategy="blocks", background_merges=False)
    index.add(ids, codes)
    with patch.object(index_module, "dense_question_bounds", wraps=index_module.dense_question_bounds) as dense:
        wide = index.search(query, threshold=200.0, min_pairs=3, limit=10)
        assert dense.call_count == 1
        narrow = index.search(query, threshold=1.0, min_pairs=1, limit=10)
        assert dense.call_count == 1
    assert wide[0] == brute_force_search(query[0], ids, codes, threshold=200.0, min_pairs=3, limit=10, metric="l2")
    assert narrow[0] == brute_force_search(query[0], ids, codes, threshold=1.0, min_pairs=1, limit=10, metric="l2")
