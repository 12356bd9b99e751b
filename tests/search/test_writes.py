"""Writes: upserts replace all K codes, removes ignore unknown ids, one apply is one atomic change,
merges keep the index exact, and bad input is refused with errors that name the problem."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.search import SimilarityIndex
from app.search.reference import brute_force_search
from tests.search.cases import make_codes


def small_index(**options) -> SimilarityIndex:
    return SimilarityIndex(4, 3, "l2", model_id="feedfacefeedface", device="cpu", **options)


def codes_for(*values: float) -> np.ndarray:
    return np.stack([np.full((3, 4), v, dtype=np.float32) for v in values])


def test_upsert_replaces_every_code_of_an_existing_id():
    index = small_index()
    index.add(np.array([1, 2]), codes_for(0.0, 5.0))
    index.add(np.array([1]), codes_for(9.0))
    assert len(index) == 2
    assert index.get_codes([1, 2]).tolist() == codes_for(9.0, 5.0).tolist()
    near_old = index.search(codes_for(0.0), threshold=0.5)
    assert near_old == [[]]


def test_remove_ignores_unknown_ids_and_counts_the_known_ones():
    index = small_index()
    index.add(np.array([1, 2, 3]), codes_for(0.0, 1.0, 2.0))
    assert index.remove(np.array([2, 77, 3])) == 2
    assert index.ids().tolist() == [1]
    assert 1 in index and 2 not in index and "1" not in index
    assert index.remove(np.array([2])) == 0
    with pytest.raises(KeyError, match="not in the index"):
        index.get_codes([2])


def test_one_apply_upserts_and_removes_together_and_stores_the_revision():
    index = small_index()
    index.apply(np.array([1, 2]), codes_for(0.0, 1.0), None, revision=10)
    index.apply(np.array([3]), codes_for(3.0), np.array([1]), revision=11)
    assert index.ids().tolist() == [2, 3]
    assert index.revision == 11
    index.apply(None, None, np.array([999]))
    assert index.revision == 11  # None keeps the checkpoint
    index.apply(revision=12)
    assert index.revision == 12


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.add(np.array([1, 1]), codes_for(0.0, 1.0)), "repeats ids"),
        (lambda i: i.remove(np.array([4, 4])), "repeats ids"),
        (lambda i: i.apply(np.array([1]), codes_for(0.0), np.array([1])), "both upserted and removed"),
        (lambda i: i.add(np.array([1]), np.zeros((1, 2, 4))), "2 samples per question"),
        (lambda i: i.add(np.array([1]), np.zeros((1, 3, 5))), "dimension 5"),
        (lambda i: i.add(np.array([1, 2]), codes_for(0.0)), "2 upsert_ids but 1 rows"),
        (lambda i: i.add(np.array([1.5]), codes_for(0.0)), "integers"),
        (lambda i: i.add(np.array([[1]]), codes_for(0.0)), "1-D"),
        (lambda i: i.add(np.array([1, 2]), np.stack([codes_for(0.0)[0], np.full((3, 4), np.inf)])), "item 1"),
        (lambda i: i.add(np.array([1]), codes_for(1e30)), "beyond"),
        (lambda i: i.apply(np.array([1]), None), "go together"),
        (lambda i: i.add(np.array([1]), codes_for(0.0), revision=1.5), "revision"),
        (lambda i: i.add(np.array([1]), codes_for(0.0), revision=True), "revision"),
    ],
)
def test_bad_writes_are_refused_and_change_nothing(call, message):
    index = small_index()
    index.add(np.array([4]), codes_for(4.0), revision=1)
    with pytest.raises(ValueError, match=message):
        call(index)
    assert index.ids().tolist() == [4] and index.revision == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dim": 0}, "dim"),
        ({"metric": "dot"}, "unknown metric"),
        ({"kind": "lsh"}, "unknown index kind"),
        ({"device": "tpu"}, "unknown device"),
        ({"device": "cuda"}, "sees no GPU"),
        ({"model_id": ""}, "model_id"),
        ({"strategy": "blocks", "knn_max_k": 3}, "knn_max_k"),
    ],
)
def test_bad_construction_is_refused(options, message):
    arguments = {"dim": 4, "samples_per_item": 3, "model_id": "m", "device": "cpu"} | options
    with pytest.raises(ValueError, match=message):
        SimilarityIndex(**arguments)


operation = st.one_of(
    st.tuples(st.just("upsert"), st.lists(st.integers(0, 30), unique=True, max_size=12)),
    st.tuples(st.just("remove"), st.lists(st.integers(0, 40), unique=True, max_size=8)),
    st.tuples(st.just("both"), st.lists(st.integers(0, 30), unique=True, min_size=1, max_size=10)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(operation, min_size=1, max_size=12),
    metric=st.sampled_from(["l2", "cosine"]),
    strategy=st.sampled_from(["blocks", "knn"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_interleaved_writes_and_merges_stay_exact(tmp_path_factory, operations, metric, strategy, seed):
    rng = np.random.default_rng(seed)
    options = {"strategy": strategy}
    options |= {"knn_max_k": 3} if strategy == "knn" else {"cluster_min_questions": 4, "block_questions": 2}
    index = SimilarityIndex(
        3, 2, metric, model_id="m", device="cpu", merge_factor=2, merge_floor_questions=4, background_merges=False,
        **options,
    )
    model: dict[int, np.ndarray] = {}
    queries = make_codes(rng, "integers", (2, 2, 3))
    for step, (what, ids) in enumerate(operations):
        ids = np.array(ids, dtype=np.int64)
        if what == "upsert":
            codes = make_codes(rng, "integers", (len(ids), 2, 3))
            index.add(ids, codes, revision=step)
            model.update(zip(ids.tolist(), codes, strict=True))
        elif what == "remove":
            assert index.remove(ids, revision=step) == len(set(ids.tolist()) & model.keys())
            for i in ids.tolist():
                model.pop(i, None)
        else:
            half = len(ids) // 2
            codes = make_codes(rng, "integers", (half, 2, 3))
            index.apply(ids[:half], codes, ids[half:], revision=step)
            for i in ids[half:].tolist():
                model.pop(i, None)
            model.update(zip(ids[:half].tolist(), codes, strict=True))
        assert_matches_model(index, model, queries, metric)
    assert index.revision == len(operations) - 1
    loaded = SimilarityIndex.load(index.save(tmp_path_factory.mktemp("saved")).parent, device="cpu", **options)
    assert loaded.revision == index.revision
    assert_matches_model(loaded, model, queries, metric)


def assert_matches_model(index: SimilarityIndex, model: dict, queries: np.ndarray, metric: str) -> None:
    ids = np.array(sorted(model), dtype=np.int64)
    codes = np.stack([model[i] for i in ids.tolist()]) if model else np.zeros((0, 2, 3), np.float32)
    assert len(index) == len(ids) and index.ids().tolist() == ids.tolist()
    assert np.array_equal(index.get_codes(ids), codes)
    for threshold in (0.0, 1.5, math.inf):
        got = index.search(queries, threshold=threshold, limit=5)
        for query, result in zip(queries, got, strict=True):
            assert result == brute_force_search(query, ids, codes, threshold=threshold, limit=5, metric=metric)


def test_background_merges_keep_few_segments_and_exact_results():
    rng = np.random.default_rng(5)
    index = small_index(merge_factor=4, merge_floor_questions=8)
    stored_ids, stored_codes = [], []
    for batch in range(40):
        ids = np.arange(batch * 5, batch * 5 + 5)
        codes = rng.standard_normal((5, 3, 4)).astype(np.float32)
        index.add(ids, codes)
        index.remove(np.array([batch * 5 - 3]))  # a deletion racing with merges
        stored_ids.append(ids)
        stored_codes.append(codes)
    assert index.wait_for_merges(timeout=30)
    assert index.merge_error is None
    ids, codes = np.concatenate(stored_ids), np.concatenate(stored_codes)
    keep = ~np.isin(ids, [b * 5 - 3 for b in range(40)])
    ids, codes = ids[keep], codes[keep]
    assert index.segment_count <= 8
    query = rng.standard_normal((1, 3, 4)).astype(np.float32)
    assert index.search(query, threshold=math.inf, limit=len(ids)) == [
        brute_force_search(query[0], ids, codes, threshold=math.inf, limit=len(ids))
    ]


def test_compact_leaves_one_segment_with_the_same_results():
    rng = np.random.default_rng(11)
    index = small_index(background_merges=False)
    ids = np.arange(1, 61)
    codes = rng.standard_normal((60, 3, 4)).astype(np.float32)
    for start in range(0, 60, 20):  # three writes, three segments
        index.add(ids[start : start + 20], codes[start : start + 20])
    index.remove(np.array([5, 45]))
    assert index.segment_count == 3
    queries = rng.standard_normal((4, 3, 4)).astype(np.float32)
    before = index.search(queries, threshold=2.0, min_pairs=2, limit=10)
    index.compact()
    assert index.segment_count == 1
    assert index.search(queries, threshold=2.0, min_pairs=2, limit=10) == before
    keep = ~np.isin(ids, [5, 45])
    assert before == [
        brute_force_search(q, ids[keep], codes[keep], threshold=2.0, limit=10, min_pairs=2) for q in queries
    ]
