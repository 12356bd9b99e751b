"""Approximate kinds propose candidates; what they return is evaluated exactly (distances, counts,
order), they survive save/load, and with every list probed IVF finds everything."""

import functools
import math

import numpy as np
import pytest

from app.search import SimilarityIndex
from app.search.reference import brute_force_search, pair_distances

RNG = np.random.default_rng(8)
CENTRES = RNG.normal(0, 2, size=(20, 8))
CODES = (CENTRES[RNG.integers(0, 20, 1500)][:, None, :] + RNG.normal(0, 0.3, (1500, 4, 8))).astype(np.float32)
IDS = np.arange(1500, dtype=np.int64) * 3
QUERIES = (CODES[RNG.integers(0, 1500, 6)] + RNG.normal(0, 0.1, (6, 4, 8))).astype(np.float32)
OPTIONS = {"approximate_min_questions": 500, "nlist": 16, "nprobe": 4, "hnsw_m": 8, "ef_search": 32}


@functools.cache
def approximate_index(kind: str, metric: str = "l2", nprobe: int = OPTIONS["nprobe"]) -> SimilarityIndex:
    """Built once per configuration (HNSW construction is the slow part); tests only read it."""
    index = SimilarityIndex(8, 4, metric, kind, device="cpu", model_id="m", **(OPTIONS | {"nprobe": nprobe}))
    index.add(IDS, CODES)
    return index


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("kind", ["ivf", "hnsw", "sq8"])
def test_returned_matches_are_exact_and_ordered(kind, metric):
    index = approximate_index(kind, metric)
    threshold = 1.0 if metric == "l2" else 0.02
    found = 0
    for query, result in zip(QUERIES, index.search(QUERIES, threshold=threshold, min_pairs=2, limit=50), strict=True):
        exact = {m.id: m for m in brute_force_search(query, IDS, CODES, threshold=threshold, min_pairs=2, limit=10**6, metric=metric)}
        assert all(exact[m.id] == m for m in result)
        assert result == sorted(result, key=lambda m: (m.distance, -m.pairs_within, m.id))
        found += len(result)
    assert found > 0


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "sq8"])
def test_ranking_returns_exact_distances(kind):
    index = approximate_index(kind)
    for query, result in zip(QUERIES, index.search(QUERIES, threshold=math.inf, limit=5), strict=True):
        assert len(result) == 5
        for match in result:
            row = int(np.searchsorted(IDS, match.id))
            closest = pair_distances(query, CODES[row : row + 1], "l2").min()
            assert match.distance == closest and match.pairs_within == 16


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("kind", ["ivf", "hnsw", "sq8"])
def test_a_threshold_beyond_what_faiss_holds_as_a_float_ranks_like_an_infinite_one(kind, metric):
    # Any finite t passes the API; a squared radius above float32's range made IVF's range search
    # refuse its argument (a 500).
    index = approximate_index(kind, metric)
    for threshold in (1e19, 1e20, 1e30):
        huge = index.search(QUERIES, threshold=threshold, limit=5)
        assert huge == index.search(QUERIES, threshold=math.inf, limit=5), threshold


def test_ivf_probing_every_list_finds_every_match():
    index = approximate_index("ivf", nprobe=16)
    for query, result in zip(QUERIES, index.search(QUERIES, threshold=1.2, limit=100), strict=True):
        assert result == brute_force_search(query, IDS, CODES, threshold=1.2, limit=100)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "sq8"])
def test_approximate_structures_survive_save_and_load(kind, tmp_path):
    index = approximate_index(kind)
    index.save(tmp_path)
    loaded = SimilarityIndex.load(tmp_path, expected_kind=kind, device="cpu", **OPTIONS)
    assert loaded.search(QUERIES, threshold=1.0) == index.search(QUERIES, threshold=1.0)


def test_small_segments_of_an_approximate_index_are_searched_exactly():
    index = SimilarityIndex(8, 4, "l2", "hnsw", device="cpu", model_id="m")  # 1500 < default minimum
    index.add(IDS, CODES)
    assert index.search(QUERIES, threshold=1.0) == [brute_force_search(q, IDS, CODES, threshold=1.0) for q in QUERIES]


def test_a_filter_that_keeps_a_minority_of_an_approximate_segment_finds_every_match_that_passes():
    """Proposed from every question and masked only then, an approximate segment's candidates are a
    query's own neighbourhood: under a filter that drops that neighbourhood (another tenant's
    questions) none would be left. The questions that pass are read instead: at once when the filter
    keeps under half of the segment, after the structure came back short above that."""
    rng = np.random.default_rng(21)
    centres = rng.normal(0, 4, size=(40, 8))
    cluster = rng.integers(0, 40, 12_000)
    codes = (centres[cluster][:, None, :] + rng.normal(0, 0.3, (12_000, 4, 8))).astype(np.float32)
    ids = np.arange(12_000, dtype=np.int64)
    index = SimilarityIndex(8, 4, "l2", "ivf", device="cpu", model_id="m", approximate_min_questions=500, nlist=64,
                            nprobe=2)
    index.add(ids, codes)
    queries = (codes[np.flatnonzero(cluster >= 30)[:3]] + rng.normal(0, 0.1, (3, 4, 8))).astype(np.float32)
    # About 5,100 questions (more than a subset, under half of the segment: read at once), and about
    # 7,500 (over half: the structure first, the questions that pass when it comes back short).
    for kept in (cluster < 17, cluster < 25):
        for threshold in (1e6, 60.0):  # ranking, and a radius that reaches the kept clusters
            found = index.search(queries, threshold=threshold, min_pairs=1, limit=20, allowed=ids[kept])
            for query, result in zip(queries, found, strict=True):
                expected = brute_force_search(query, ids[kept], codes[kept], threshold=threshold, min_pairs=1, limit=20)
                assert result == expected and len(expected) == 20
