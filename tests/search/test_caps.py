"""The block search's bounds and pruning, checked against the float64 reference.

- Spherical caps (cosine): every cap bound (groups, blocks, questions; nearest and rank-th nearest
  query sample) is at most the reference distance to every code of the cap, on codes built to
  break them: tiny angles (cosines within float error of 1), antipodes, zero codes, codes that
  cancel, 1-ulp nudges, magnitudes from 1e-30 to 1e12.
- The pairs rule's count pruning (blocks that fewer than ceil(min_pairs / K) query samples reach,
  questions with fewer than min_pairs pairs possibly within t) never drops a match: thresholds
  are set exactly at a question's min_pairs-th pair distance and one float step either side.
- Real-model-shaped codes (unit vectors around cluster means in d = 128, thousands of questions,
  so that the k-means partition, groups and question caps all engage), the shipped default's rule
  (read from models/default/config.json) and 8 of 25.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.search import SimilarityIndex
from app.search import sources as sources_module
from app.search.bounds import FloatErrorModel, SearchGeometry
from app.search.partition import Caps, PartitionPlan
from app.search.reference import brute_force_search, pair_distances
from app.search.segment import Segment
from tests.search.cases import ALL_STYLES, collections, make_codes, with_copies

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reference_to_members(query_codes: np.ndarray, codes: np.ndarray, metric: str) -> np.ndarray:
    """(Kq, D), (n, K, D) -> (Kq,) smallest reference distance of each query code to any code."""
    distances = pair_distances(query_codes, codes, metric)  # (n, Kq, K)
    return distances.transpose(1, 0, 2).reshape(len(query_codes), -1).min(axis=1)


def _check_level(bounds_of, members, query, segment, metric):
    """bounds_of(rank) -> (levels,) bounds; members: list of question-row arrays per level."""
    codes = segment.codes
    for level, rows in enumerate(members):
        if not len(rows):
            continue
        per_sample = np.sort(_reference_to_members(query, codes[rows], metric))
        for rank in range(1, len(query) + 1):
            assert bounds_of(rank)[level] <= per_sample[rank - 1], (level, rank)


@FAST
@given(
    collection=collections(max_questions=60, max_queries=2, styles=ALL_STYLES),
    cluster_min=st.sampled_from([1, 6, 4096]),
    block_questions=st.integers(1, 5),
    group_factor=st.sampled_from([1, 2, 4]),
)
def test_every_bound_is_below_the_reference_distance_to_every_code_it_covers(
    collection, cluster_min, block_questions, group_factor
):
    """Groups, blocks and (cosine) questions: bound(rank r) <= the r-th smallest, over query
    samples, of the reference distance to the nearest code of the group, block or question."""
    if not len(collection.ids):
        return
    geometry, errors = SearchGeometry(collection.metric), FloatErrorModel(collection.dim)
    plan = PartitionPlan(block_questions=block_questions, cluster_min_questions=cluster_min, chunk_questions=7,
                         group_factor=group_factor)
    segment = Segment.build(collection.ids, collection.codes, geometry, errors, plan)
    structure = segment.block_bounds(geometry, errors)
    partition = segment.partition
    blocks = [np.arange(partition.offsets[b], partition.offsets[b + 1]) for b in range(partition.block_count)]
    groups = [
        np.arange(partition.offsets[partition.group_offsets[g]], partition.offsets[partition.group_offsets[g + 1]])
        for g in range(len(partition.group_offsets) - 1)
    ]
    picked = np.arange(partition.block_count)[::2]
    caps = structure.question_caps
    questions = [np.array([row]) for row in range(segment.size)]
    for query in collection.queries:
        search = geometry.to_search_space(query)
        norms = np.sqrt(np.einsum("ij,ij->i", search, search, dtype=np.float64))
        levels = [
            (lambda r, s=search, n=norms: structure.groups(s, n, (r,))[0], groups),
            (lambda r, s=search, n=norms: structure.blocks(s, n, ranks=(r,))[0], blocks),
            (lambda r, s=search, n=norms: structure.blocks(s, n, picked, (r,))[0], [blocks[b] for b in picked]),
        ]
        if caps is not None:
            levels.append(
                (lambda r, s=search, n=norms: caps.lower_bounds(s, n, errors, geometry.representation_error, ranks=(r,))[0],
                 questions)
            )
        for bounds_of, members in levels:
            _check_level(bounds_of, members, query, segment, collection.metric)
        # All ranks in one pass (what a search asks for) give what each rank gives alone.
        ranks = tuple(range(1, len(query) + 1))
        together = structure.blocks(search, norms, ranks=ranks)
        assert together.shape == (len(ranks), partition.block_count)
        for position, rank in enumerate(ranks):
            assert np.array_equal(together[position], structure.blocks(search, norms, ranks=(rank,))[0])


def test_caps_of_codes_that_cancel_bound_nothing_but_stay_valid():
    """A question whose codes cancel (x and -x, or -x nudged by one ulp) has no direction to speak
    of; its cap must bound nothing (0) rather than something wrong."""
    x = np.array([1e-38, 1.0, -2.0, 0.5], dtype=np.float32)
    nudged = -np.nextafter(x, np.float32(np.inf))
    codes = np.stack([np.stack([x, -x]), np.stack([x, nudged]), np.stack([x, np.zeros(4, np.float32)])])
    geometry, errors = SearchGeometry("cosine"), FloatErrorModel(4)
    segment = Segment.build(np.arange(3), codes, geometry, errors, PartitionPlan(cluster_min_questions=1, block_questions=1))
    caps = segment.block_bounds(geometry, errors).question_caps
    for query in (x[None], -x[None], np.zeros((1, 4), np.float32), np.array([[3.0, -1.0, 0.0, 2.0]], np.float32)):
        search = geometry.to_search_space(query)
        norms = np.linalg.norm(search.astype(np.float64), axis=1)
        bounds = caps.lower_bounds(search, norms, errors, geometry.representation_error)[0]
        truth = pair_distances(query, segment.codes, "cosine").reshape(3, -1).min(axis=1)
        assert (bounds <= truth).all()


@st.composite
def counted_cases(draw):
    """Cosine or l2 collections with a threshold at a question's min_pairs-th pair distance (or one
    float step either side) and min_pairs > K, so that blocks need ceil(min_pairs / K) >= 2 query
    samples and the question filter decides at the boundary."""
    collection = draw(collections(max_questions=50, max_queries=2, styles=ALL_STYLES))
    k, kq = collection.samples, collection.queries.shape[1]
    if len(collection.ids) == 0 or k * kq < 2:
        return collection, 0.5, 1
    min_pairs = draw(st.integers(min(k + 1, k * kq), k * kq), label="min_pairs")
    distances = pair_distances(collection.queries[0], collection.codes, collection.metric).reshape(len(collection.ids), -1)
    row = draw(st.integers(0, len(collection.ids) - 1), label="question")
    value = float(np.sort(distances[row])[min_pairs - 1])
    step = draw(st.sampled_from(["at", "below", "above"]), label="step")
    if step != "at":
        value = float(np.nextafter(value, 0.0 if step == "below" else math.inf))
    return collection, max(value, 0.0), min_pairs


@FAST
@given(case=counted_cases(), cluster_min=st.sampled_from([1, 8]), block_questions=st.integers(1, 4),
       limit=st.sampled_from([1, 3, 1000]))
def test_count_pruning_at_the_boundary_equals_the_reference(case, cluster_min, block_questions, limit):
    collection, threshold, min_pairs = case
    index = SimilarityIndex(
        collection.dim, collection.samples, collection.metric, model_id="caps", device="cpu", strategy="blocks",
        cluster_min_questions=cluster_min, block_questions=block_questions, group_factor=2,
    )
    index.add(collection.ids, collection.codes)
    got = index.search(collection.queries, threshold=threshold, min_pairs=min_pairs, limit=limit)
    want = [
        brute_force_search(q, collection.ids, collection.codes, threshold=threshold, min_pairs=min_pairs, limit=limit,
                           metric=collection.metric)
        for q in collection.queries
    ]
    assert got == want


def test_blocks_that_too_few_query_samples_reach_are_never_read():
    """K = 2, Kq = 2, min_pairs = 3: a match needs both query samples within t of it. A cluster
    that only the first query sample reaches cannot hold one, so its blocks are not read at all;
    without the count rule (min_pairs = 1) they are, and both answers equal the reference."""
    rng = np.random.default_rng(11)
    dim = 16
    near, far = rng.standard_normal(dim), rng.standard_normal(dim)
    near /= np.linalg.norm(near)
    far = far - far @ near * near
    far /= np.linalg.norm(far)
    codes = (near + rng.normal(0, 1e-3, size=(400, 2, dim))).astype(np.float32)
    query = np.stack([near, far]).astype(np.float32)[None]
    ids = np.arange(400, dtype=np.int64)
    index = SimilarityIndex(dim, 2, "cosine", model_id="caps", device="cpu", cluster_min_questions=1, block_questions=8)
    index.add(ids, codes)
    reads = []
    original = sources_module.BlockSource._read

    def spy(self, blocks, cutoff):
        reads.append(len(blocks))
        return original(self, blocks, cutoff)

    sources_module.BlockSource._read = spy
    try:
        assert index.search(query, threshold=0.01, min_pairs=3, limit=10) == [[]]
        assert reads == []
        got = index.search(query, threshold=0.01, min_pairs=1, limit=10)
        assert reads
    finally:
        sources_module.BlockSource._read = original
    assert got[0] == brute_force_search(query[0], ids, codes, threshold=0.01, min_pairs=1, limit=10, metric="cosine")
    assert len(got[0]) == 10


def _model_like(rng: np.random.Generator, questions: int, dim: int = 128, intents: int = 40) -> np.ndarray:
    """Unit codes shaped like the shipped vMF model's: intent means on the sphere, question means
    around them, K = 5 samples around each question mean (about 0.22 from it, as measured)."""
    centres = rng.standard_normal((intents, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    means = centres[rng.integers(0, intents, questions)] + rng.normal(0, 0.06, (questions, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    codes = means[:, None, :] + rng.normal(0, 0.02, (questions, 5, dim))
    return (codes / np.linalg.norm(codes, axis=2, keepdims=True)).astype(np.float32)


def _shipped_rule() -> tuple[float, int]:
    search = json.loads((Path(__file__).parents[2] / "models" / "default" / "config.json").read_text())["settings"]["search"]
    return search["threshold"], search["min_pairs"]


# The shipped default's calibrated rule, and the previous default's 8 of 25 (two query samples must
# reach a block: the count pruning's needed > 1 path).
RULES = {"shipped": _shipped_rule(), "8-of-25": (0.1693592518568039, 8)}


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("strategy", ["blocks", "legacy-blocks"])
def test_model_shaped_codes_at_the_shipped_rule_and_at_its_boundaries(strategy, rule_name):
    rule_threshold, rule_min_pairs = RULES[rule_name]
    rng = np.random.default_rng(2026)
    codes = _model_like(rng, 6000)
    ids = rng.choice(10**6, size=len(codes), replace=False).astype(np.int64)
    index = SimilarityIndex(128, 5, "cosine", model_id="caps", device="cpu", strategy=strategy, background_merges=False)
    index.add(ids[:5000], codes[:5000])
    index.add(ids[5000:], codes[5000:])  # a second, unclustered segment
    index.remove(ids[::97])
    live = np.ones(len(ids), dtype=bool)
    live[::97] = False
    # Queries: stored questions' codes nudged (ties and near-ties with their source), and fresh ones.
    queries = np.concatenate([
        with_copies(rng, codes[rng.integers(0, len(codes), 6)], codes),
        _model_like(rng, 6),
    ])
    for query in queries:
        distances = pair_distances(query, codes[live], "cosine").reshape(int(live.sum()), -1)
        nth = np.sort(distances, axis=1)[:, rule_min_pairs - 1]
        at = float(np.sort(nth)[min(3, len(nth) - 1)])  # the 4th question's n-th pair: ties at t
        for threshold in (rule_threshold, at, float(np.nextafter(at, 0.0)), float(np.nextafter(at, 1.0))):
            for limit in (10, 10**6):
                got = index.search(query[None], threshold=threshold, min_pairs=rule_min_pairs, limit=limit)[0]
                want = brute_force_search(query, ids[live], codes[live], threshold=threshold,
                                          min_pairs=rule_min_pairs, limit=limit, metric="cosine")
                assert got == want
    # Batches take the same per-query sources (or the dense scan) and answer the same.
    rule = dict(threshold=rule_threshold, min_pairs=rule_min_pairs, limit=10)
    batch = index.search(queries, **rule)
    assert batch == [index.search(q[None], **rule)[0] for q in queries]


def test_a_loaded_index_rebuilds_its_caps_and_answers_the_same(tmp_path):
    rng = np.random.default_rng(7)
    codes = _model_like(rng, 800, dim=32)
    ids = np.arange(800, dtype=np.int64)
    index = SimilarityIndex(32, 5, "cosine", model_id="caps", device="cpu", cluster_min_questions=100)
    index.add(ids, codes)
    index.save(tmp_path)
    loaded = SimilarityIndex.load(tmp_path, device="cpu")
    segment = loaded._snapshot.views[0].segment
    assert segment._block_bounds is not None and segment._block_bounds.question_caps is not None
    queries = make_codes(rng, "clustered", (3, 5, 32))
    queries[0] = codes[5]
    for threshold, min_pairs in ((0.05, 5), (0.3, 1), (math.inf, 0)):
        got = loaded.search(queries, threshold=threshold, min_pairs=min_pairs, limit=20)
        assert got == index.search(queries, threshold=threshold, min_pairs=min_pairs, limit=20)
        assert got == [brute_force_search(q, ids, codes, threshold=threshold, min_pairs=min_pairs, limit=20,
                                          metric="cosine") for q in queries]


def test_caps_never_cover_less_than_their_codes():
    """cos_radius is a lower bound of the cosine between each cap's direction and each of its
    nonzero codes, computed independently in float64 from the original codes."""
    rng = np.random.default_rng(3)
    for style in ("directions", "clustered", "integers", "floats"):
        codes = make_codes(rng, style, (300, 4, 12))
        geometry, errors = SearchGeometry("cosine"), FloatErrorModel(12)
        segment = Segment.build(np.arange(300), codes, geometry, errors, PartitionPlan(cluster_min_questions=50, block_questions=4))
        structure = segment.block_bounds(geometry, errors)
        stored = segment.codes.astype(np.float64).reshape(-1, 12)
        norms = np.linalg.norm(stored, axis=1)
        nonzero = norms > 0
        unit = np.where(nonzero[:, None], stored / np.where(nonzero, norms, 1.0)[:, None], 0.0)
        offsets = segment.partition.offsets * 4
        caps: Caps = structure.block_caps
        for b in range(segment.partition.block_count):
            members = slice(offsets[b], offsets[b + 1])
            direction = caps.directions[b].astype(np.float64)
            if np.linalg.norm(direction) == 0 or caps.cos_radius[b] == -1.0:
                continue
            cosines = unit[members][nonzero[members]] @ (direction / np.linalg.norm(direction))
            if len(cosines):
                assert caps.cos_radius[b] <= cosines.min()
            assert caps.has_zero[b] == (~nonzero[members]).any()


def test_search_space_vectors_are_the_float64_unit_vectors_rounded_once_across_chunks():
    """The bounds assume each search vector is its code's float64 unit vector rounded to float32
    (zero codes: +0); the normalisation runs a cache-sized chunk at a time, so rows on both sides of
    a chunk boundary are checked, with zero, negative-zero, subnormal and huge codes among them."""
    from app.search.bounds import NORM_CHUNK_ROWS, row_norms

    rng = np.random.default_rng(3)
    codes = rng.standard_normal((NORM_CHUNK_ROWS // 2 + 7, 2, 16)).astype(np.float32)
    codes[0] = 0.0
    codes[1] = -0.0
    codes[2, 0] = np.float32(1e-45) * rng.integers(1, 4, 16)
    codes[3, 1] = 1e30
    wide = codes.reshape(-1, 16).astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    expected = np.where(norms > 0, wide / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32).reshape(codes.shape)

    vectors = SearchGeometry("cosine").to_search_space(codes)

    assert vectors.dtype == np.float32 and np.array_equal(vectors.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(row_norms(codes.reshape(-1, 16)), norms[:, 0])
    assert SearchGeometry("l2").to_search_space(codes) is codes
    # Whatever the memory layout (column-major, a last chunk of one row): the bits of C-order rows.
    rows = rng.standard_normal((NORM_CHUNK_ROWS + 1, 128)).astype(np.float32)
    assert np.array_equal(row_norms(np.asfortranarray(rows)), np.linalg.norm(rows.astype(np.float64), axis=1))
    column_major = np.asfortranarray(codes.reshape(-1, 16))
    assert np.array_equal(SearchGeometry("cosine").to_search_space(column_major).view(np.uint32),
                          expected.reshape(-1, 16).view(np.uint32))
