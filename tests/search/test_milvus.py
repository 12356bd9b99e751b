"""The Milvus backend (embedded milvus-lite) answers exactly what the brute-force reference answers,
with the index property tests' own collections (tests/search/cases.py): thresholds on and next to
pair distances, ties, duplicates, zero vectors; limits on Milvus's result size that must be paged
rather than cut; filters; idempotent upserts and deletes; the revision and the model checks kept in
the collection across a restart; and an alias switched while searches run through it."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import require_milvus

require_milvus()

from app.search import IndexFileError, Match  # noqa: E402
from app.search.milvus import (  # noqa: E402
    MilvusIndex,
    MilvusIndexError,
    alias_target,
    create_for_alias,
    switch_alias,
)
from app.search.reference import brute_force_search  # noqa: E402
from tests.search.cases import collections, expected, make_codes, thresholds  # noqa: E402

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL = "0123456789abcdef"
# Engine limits small enough that tiny collections hit them: the first range search asks for a few
# hits, the cap stops the growth early, so truncation, regrowth and id-range paging all happen.
milvus_options = st.fixed_dictionaries({
    "first_limit": st.integers(1, 8),
    "topk_cap": st.integers(7, 24),  # must exceed K (at most 6 in the cases)
    "vectors_per_request": st.integers(1, 8),
})


class Pool:
    """One milvus-lite database per test module and one collection per (dim, K, metric), emptied
    for each example: creating a collection costs far more than a search."""

    def __init__(self, uri: str):
        self.uri = uri
        self.names: dict[tuple, str] = {}
        self.counter = itertools.count()

    def index(self, dim: int, samples: int, metric: str, **options) -> MilvusIndex:
        key = (dim, samples, metric)
        name = self.names.get(key)
        if name is None:
            name = self.names[key] = f"case_{dim}_{samples}_{metric}"
            index = MilvusIndex(self.uri, name, dim, samples, metric, MODEL, **options)
        else:
            index = MilvusIndex(self.uri, name, dim, samples, metric, MODEL, exists_ok=True, **options)
            index.client.delete(name, filter="sample >= 0")
        return index

    def fresh(self, prefix: str, dim: int, samples: int, metric: str = "l2", **options) -> MilvusIndex:
        return MilvusIndex(self.uri, f"{prefix}_{next(self.counter)}", dim, samples, metric, MODEL, **options)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Pool:
    return Pool(str(tmp_path_factory.mktemp("milvus") / "milvus.db"))


def index_for(pool: Pool, collection, **options) -> MilvusIndex:
    return pool.index(collection.dim, collection.samples, collection.metric, **options)


# ------------------------------------------------------------------------------ property tests


@FAST
@given(data=st.data(), collection=collections(), options=milvus_options)
def test_search_equals_the_reference(pool, data, collection, options):
    index = index_for(pool, collection, **options)
    index.add(collection.ids, collection.codes)
    threshold = data.draw(thresholds(collection))
    min_pairs = data.draw(st.integers(0, collection.samples * collection.queries.shape[1] + 1), label="min_pairs")
    limit = data.draw(st.integers(0, 12), label="limit")
    got = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=limit)
    assert got == expected(collection, collection.ids, collection.codes, threshold, min_pairs, limit)


@FAST
@given(collection=collections(max_questions=60), options=milvus_options, limit=st.integers(1, 15))
def test_infinite_threshold_ranks_the_nearest_questions(pool, collection, options, limit):
    index = index_for(pool, collection, **options)
    index.add(collection.ids, collection.codes)
    got = index.search(collection.queries, threshold=math.inf, limit=limit)
    assert got == expected(collection, collection.ids, collection.codes, math.inf, 1, limit)


@FAST
@given(
    data=st.data(),
    collection=collections(max_questions=60),
    options=milvus_options,
    path=st.sampled_from(["subset", "expression", "client-side"]),
)
def test_filtered_search_equals_the_reference_over_the_allowed_questions(pool, data, collection, options, path):
    limits = {"subset": (10**9, 0), "expression": (0, 10**9), "client-side": (0, 0)}[path]
    index = index_for(pool, collection, subset_max_questions=limits[0], expr_max_ids=limits[1], **options)
    index.add(collection.ids, collection.codes)
    n = len(collection.ids)
    picks = data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=5, unique=True), label="deleted")
    deleted = collection.ids[picks] if n else np.empty(0, dtype=np.int64)
    index.remove(deleted)
    share = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="share")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    allowed = collection.ids[rng.random(n) < share] if n else np.empty(0, dtype=np.int64)
    # Ids that are not stored (never, or deleted) may be allowed too: they match nothing.
    allowed = np.concatenate([allowed, deleted, np.array([10**9], dtype=np.int64)])
    threshold = data.draw(thresholds(collection))
    min_pairs = data.draw(st.integers(0, collection.samples * collection.queries.shape[1] + 1), label="min_pairs")
    limit = data.draw(st.integers(0, 12), label="limit")
    got = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=limit, allowed=allowed)
    keep = np.isin(collection.ids, np.setdiff1d(allowed, deleted))
    want = expected(collection, collection.ids[keep], collection.codes[keep], threshold, min_pairs, limit)
    assert got == want


@FAST
@given(data=st.data(), collection=collections(max_questions=30))
def test_replayed_upserts_and_deletes_change_nothing(pool, data, collection):
    """The change log may be applied twice (a crash between the data and the revision): the result
    is the same as applying it once."""
    index = index_for(pool, collection)
    n = len(collection.ids)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    new_codes = make_codes(rng, "floats", collection.codes.shape)
    changed = rng.random(n) < 0.5
    removed = collection.ids[rng.random(n) < 0.3]
    upserts = collection.ids[changed & ~np.isin(collection.ids, removed)]
    index.add(collection.ids, collection.codes, revision=1)
    for _ in range(data.draw(st.integers(1, 3), label="replays")):
        index.apply(upserts, new_codes[np.isin(collection.ids, upserts)], removed, revision=2)
    final = collection.codes.copy()
    final[np.isin(collection.ids, upserts)] = new_codes[np.isin(collection.ids, upserts)]
    keep = ~np.isin(collection.ids, removed)
    assert index.ids().tolist() == sorted(collection.ids[keep].tolist())
    assert len(index) == int(keep.sum()) and index.revision == 2
    if keep.any():
        assert index.get_codes(collection.ids[keep]).tolist() == final[keep].tolist()
    got = index.search(collection.queries, threshold=math.inf, limit=5)
    assert got == expected(collection, collection.ids[keep], final[keep], math.inf, 1, 5)


# ----------------------------------------------------------------------------- engine limits


def test_thousands_of_samples_within_the_threshold_are_paged_past_the_cap(pool):
    """400 questions (2000 samples) all within t of every query sample, a cap of 64 hits per search:
    each vector's answer is grown to the cap and then paged by id ranges, never cut."""
    rng = np.random.default_rng(3)
    ids = rng.choice(np.arange(-10**6, 10**6), 400, replace=False).astype(np.int64)
    codes = (rng.standard_normal((400, 5, 16)) * 0.01).astype(np.float32)
    queries = (rng.standard_normal((1, 5, 16)) * 0.01).astype(np.float32)
    index = pool.fresh("cap", 16, 5, topk_cap=64, first_limit=8)
    index.add(ids, codes)
    got = index.search(queries, threshold=1.0, min_pairs=25, limit=400)
    assert [len(r) for r in got] == [400]
    assert got == [brute_force_search(queries[0], ids, codes, threshold=1.0, min_pairs=25, limit=400)]
    counters = index.counters.as_dict()
    # 5 vectors, each grown 8 -> 64 and then paged in parts of fewer than 64 hits (2000 hits each).
    assert counters["truncated"] >= 10 and counters["split_requests"] >= 5 * 2000 // 64
    assert counters["scans"] == 0  # paged, not scanned


def test_a_ranking_beyond_the_cap_falls_back_to_an_exact_scan_and_counts_it(pool):
    rng = np.random.default_rng(4)
    ids = np.arange(200, dtype=np.int64)
    codes = rng.standard_normal((200, 3, 4)).astype(np.float32)
    query = rng.standard_normal((1, 3, 4)).astype(np.float32)
    index = pool.fresh("rank", 4, 3, topk_cap=16, first_limit=4)
    index.add(ids, codes)
    got = index.search(query, threshold=math.inf, limit=150)
    assert got == [brute_force_search(query[0], ids, codes, threshold=math.inf, limit=150)]
    assert index.counters.as_dict()["scans"] == 1
    # A small limit is answered by growing top-k searches alone.
    assert index.search(query, threshold=0.5, min_pairs=0, limit=3) == [
        brute_force_search(query[0], ids, codes, threshold=0.5, min_pairs=0, limit=3)
    ]
    assert index.counters.as_dict()["scans"] == 1


def test_cosine_zero_vectors_are_at_distance_one_from_everything(pool):
    index = pool.fresh("zero", 2, 1, "cosine")
    index.add(np.array([1, 2, 3]), np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 3.0]]], dtype=np.float32))
    zero_query = np.zeros((1, 1, 2), dtype=np.float32)
    assert index.search(zero_query, threshold=1.0) == [[Match(1, 1.0, 1), Match(2, 1.0, 1), Match(3, 1.0, 1)]]
    assert index.search(zero_query, threshold=0.999) == [[]]
    assert index.search(zero_query, threshold=math.inf, limit=2) == [[Match(1, 1.0, 1), Match(2, 1.0, 1)]]
    assert index.search(np.array([[[2.0, 0.0]]], dtype=np.float32), threshold=0.5) == [[Match(2, 0.0, 1)]]


def test_one_dimensional_codes_are_padded_for_milvus(pool):
    index = pool.fresh("dim1", 1, 2)
    index.add(np.array([7, 8]), np.array([[[0.0], [1.0]], [[5.0], [6.0]]], dtype=np.float32))
    assert index.get_codes([8]).tolist() == [[[5.0], [6.0]]]
    assert index.search(np.array([[[0.5]]], dtype=np.float32), threshold=0.5) == [[Match(7, 0.5, 2)]]


# ------------------------------------------------------------------------ filters and metadata


def test_metadata_is_stored_and_a_milvus_expression_filters_on_it(pool):
    rng = np.random.default_rng(6)
    codes = (rng.standard_normal((30, 2, 4)) * 0.1).astype(np.float32)
    ids = np.arange(100, 130, dtype=np.int64)
    tenants = ["acme" if i % 3 == 0 else "other" for i in range(30)]
    index = pool.fresh("meta", 4, 2)
    index.add(ids, codes, metadata=[{"tenant": t} for t in tenants])
    acme = ids[[t == "acme" for t in tenants]]
    query = codes[[3]]
    got = index.search(query, threshold=0.3, limit=30, expr='meta["tenant"] == "acme"')
    want = brute_force_search(query[0], acme, codes[np.isin(ids, acme)], threshold=0.3, limit=30)
    assert got == [want] and want
    assert index.search(query, threshold=0.3, limit=30, expr='meta["tenant"] == "acme"', allowed=acme[:2]) == [
        brute_force_search(query[0], acme[:2], codes[np.isin(ids, acme[:2])], threshold=0.3, limit=30)
    ]


# ------------------------------------------------------------------------------------ writes


def test_upsert_replaces_every_code_and_remove_counts_the_known_ids(pool):
    index = pool.fresh("writes", 4, 3)
    ones = np.ones((1, 3, 4), dtype=np.float32)
    index.add(np.array([1, 2]), np.concatenate([0 * ones, 5 * ones]))
    index.add(np.array([1]), 9 * ones)
    assert len(index) == 2 and index.get_codes([1, 2]).tolist() == np.concatenate([9 * ones, 5 * ones]).tolist()
    assert index.search(0 * ones, threshold=0.5) == [[]]
    assert index.remove(np.array([2, 77, 2**62])) == 1
    assert index.ids().tolist() == [1] and 1 in index and 2 not in index and "1" not in index
    with pytest.raises(KeyError, match="not in the index"):
        index.get_codes([2])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.add(np.array([1, 1]), np.zeros((2, 3, 4))), "repeats ids"),
        (lambda i: i.apply(np.array([1]), np.zeros((1, 3, 4)), np.array([1])), "both upserted and removed"),
        (lambda i: i.add(np.array([1]), np.zeros((1, 2, 4))), "2 samples per question"),
        (lambda i: i.add(np.array([1]), np.zeros((1, 3, 5))), "dimension 5"),
        (lambda i: i.add(np.array([2**62]), np.zeros((1, 3, 4))), "primary key"),
        (lambda i: i.add(np.array([1]), np.full((1, 3, 4), np.nan)), "NaN"),
        (lambda i: i.add(np.array([1]), np.zeros((1, 3, 4)), revision=1.5), "revision"),
        (lambda i: i.add(np.array([1]), np.zeros((1, 3, 4)), metadata=[{"x": object()}]), "serializable"),
        (lambda i: i.search(np.zeros((1, 2, 5)), threshold=1.0), "dimension 5"),
        (lambda i: i.search(np.zeros((1, 1, 4)), threshold=-1.0), "non-negative"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(pool, call, message):
    index = pool.fresh("bad", 4, 3)
    index.add(np.array([4]), np.ones((1, 3, 4), dtype=np.float32), revision=1)
    with pytest.raises((ValueError, TypeError), match=message):
        call(index)
    assert index.ids().tolist() == [4] and index.revision == 1


# ------------------------------------------------------------------- the collection is the state


def test_the_revision_and_the_data_survive_a_restart(tmp_path):
    from milvus_lite.server_manager import server_manager_instance

    uri = str(tmp_path / "restart.db")
    codes = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    index = MilvusIndex(uri, "questions", 4, 3, "cosine", MODEL)
    assert index.revision is None and MilvusIndex.exists(uri, "questions")
    index.apply(np.array([10, 11]), codes, None, revision=41)
    index.apply(None, None, np.array([10]), revision=42)
    index.save()
    index.close()
    server_manager_instance.release_server(uri)  # the embedded server stops, as when the process ends

    reopened = MilvusIndex.load(uri, "questions", expected_model_id=MODEL, expected_dim=4, expected_samples=3,
                                expected_metric="cosine")
    assert reopened.revision == 42 and reopened.ids().tolist() == [11]
    assert reopened.get_codes([11]).tolist() == codes[1:].tolist()
    assert (reopened.model_id, reopened.dim, reopened.samples_per_item, reopened.metric) == (MODEL, 4, 3, "cosine")
    assert reopened.kind == "exact" and reopened.device == "milvus-lite"
    reopened.close()
    server_manager_instance.release_server(uri)


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({"expected_model_id": "feedfeedfeedfeed"}, "built by model 0123456789abcdef, this service runs model feedfeedfeedfeed"),
        ({"expected_dim": 8}, "latent dimension 4, expected 8"),
        ({"expected_samples": 5}, r"samples per question \(K\) 3, expected 5"),
        ({"expected_metric": "l2"}, "metric 'cosine', expected 'l2'"),
    ],
)
def test_a_collection_built_for_another_model_is_refused_by_name(pool, expected, message):
    index = pool.fresh("mismatch", 4, 3, "cosine")
    with pytest.raises(MilvusIndexError, match=message) as error:
        MilvusIndex.load(pool.uri, index.name, **expected)
    assert isinstance(error.value, IndexFileError)  # refused like a mismatched saved FAISS index
    with pytest.raises(MilvusIndexError, match="already exists"):
        MilvusIndex(pool.uri, index.name, 4, 3, "cosine", MODEL)


def test_missing_and_foreign_collections_are_refused(pool):
    from pymilvus import DataType

    with pytest.raises(MilvusIndexError, match="no Milvus collection or alias 'nothing_here'"):
        MilvusIndex.load(pool.uri, "nothing_here")
    assert not MilvusIndex.exists(pool.uri, "nothing_here")
    client = pool.fresh("probe", 2, 1).client
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection("foreign", schema=schema)
    assert not MilvusIndex.exists(pool.uri, "foreign")
    with pytest.raises(MilvusIndexError, match="does not hold a qsim index"):
        MilvusIndex.load(pool.uri, "foreign")


# ----------------------------------------------------------------------------------- aliases


def test_searches_through_the_alias_never_fail_while_it_is_switched(pool):
    """A reindex builds the next collection and switches the alias; searches through the alias keep
    answering, each from the old or the new collection, whole."""
    rng = np.random.default_rng(8)
    first = create_for_alias(pool.uri, "live", 4, 2, "l2", MODEL)
    assert alias_target(first.client, "live") == first.name  # the first build creates the alias
    old_codes = rng.standard_normal((40, 2, 4)).astype(np.float32)
    new_codes = rng.standard_normal((50, 2, 4)).astype(np.float32)
    first.add(np.arange(40), old_codes, revision=7)
    second = create_for_alias(pool.uri, "live", 4, 2, "l2", MODEL)
    assert alias_target(second.client, "live") == first.name  # later builds wait for the switch
    second.add(np.arange(100, 150), new_codes, revision=9)
    query = rng.standard_normal((1, 2, 4)).astype(np.float32)
    answers = {
        first.name: brute_force_search(query[0], np.arange(40), old_codes, threshold=1.5, limit=10),
        second.name: brute_force_search(query[0], np.arange(100, 150), new_codes, threshold=1.5, limit=10),
    }
    assert answers[first.name] != answers[second.name]
    live = MilvusIndex.load(pool.uri, "live", expected_model_id=MODEL)
    seen, errors, stop = set(), [], threading.Event()

    def search_until_stopped():
        while not stop.is_set():
            try:
                got = live.search(query, threshold=1.5, limit=10)[0]
                seen.add(next(name for name, answer in answers.items() if answer == got))
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                errors.append(error)
                return

    threads = [threading.Thread(target=search_until_stopped) for _ in range(2)]
    for thread in threads:
        thread.start()
    for turn in range(10):
        switch_alias(live.client, "live", (second if turn % 2 == 0 else first).name)
        threading.Event().wait(0.05)
    assert switch_alias(live.client, "live", second.name) == first.name
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors and seen == set(answers)
    assert live.revision == 9 and live.collection == second.name
    # A replica that must match its encoder pins the collection the alias names now.
    pinned = MilvusIndex.load(pool.uri, "live", resolve_alias=True)
    assert pinned.name == second.name
    first.drop()
    assert live.search(query, threshold=1.5, limit=10) == [answers[second.name]]


def test_an_allowed_id_whose_key_would_overflow_matches_nothing(pool):
    """With K = 4, question 2**62 would have keys 2**64 + s, which wrap onto question 0's keys."""
    index = pool.fresh("overflow", 2, 4)
    index.add(np.array([0]), np.ones((1, 4, 2), dtype=np.float32))
    query = np.ones((1, 1, 2), dtype=np.float32)
    assert index.search(query, threshold=1.0, allowed=[2**62]) == [[]]
    assert index.search(query, threshold=1.0, allowed=[0, 2**62]) == [[Match(0, 0.0, 4)]]
    assert 2**62 not in index


def test_cosine_codes_too_small_for_float32_normalisation_are_stored_and_found_exactly(pool):
    """Codes of 1e-45s (one ulp from zero): Milvus normalises in float32, where their norm underflows;
    they are stored scaled up by a power of two and read back bit for bit."""
    index = pool.fresh("tiny", 3, 2, "cosine")
    ulp = float(np.nextafter(np.float32(0), np.float32(1)))
    codes = np.array([[[ulp, -ulp, ulp], [1e-20, 2e-20, 0.0]], [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]], dtype=np.float32)
    ids = np.array([1, 2])
    index.add(ids, codes)
    assert index.get_codes(ids).tobytes() == codes.tobytes()
    queries = np.array([[[2 * ulp, -2 * ulp, 2 * ulp]], [[3e-20, 4e-20, 0.0]], [[1.0, 2.0, 0.0]]], dtype=np.float32)
    for threshold in (0.0, 1e-6, 0.5, math.inf):
        got = index.search(queries, threshold=threshold, limit=5)
        assert got == [brute_force_search(q, ids, codes, threshold=threshold, limit=5, metric="cosine") for q in queries]
    assert index.search(queries[:1], threshold=1e-6) == [[Match(1, 0.0, 1)]]


def test_an_index_on_a_shared_client_knows_it_talks_to_milvus_lite(pool):
    shared = pool.fresh("shared", 2, 1).client
    index = MilvusIndex(None, "on_shared_client", 2, 1, "l2", MODEL, client=shared)
    assert index.lite and index.device == "milvus-lite" and index.first_limit == 256
    assert MilvusIndex.load(None, "on_shared_client", client=shared).device == "milvus-lite"
