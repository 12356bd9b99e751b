"""The GPU path (FAISS GPU flat indexes, k-NN with growing k, host fallback past k = 2048) answers
exactly like the reference. These run only where FAISS sees a GPU (faiss-gpu installed); the same
strategy is exercised on the CPU by the k-NN tests in test_exact_search.py."""

import math

import numpy as np
import pytest

from app.search import SimilarityIndex
from app.search.accelerator import visible_gpus
from app.search.reference import brute_force_search

pytestmark = pytest.mark.skipif(visible_gpus() == 0, reason="FAISS sees no GPU")


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_gpu_search_equals_the_reference(metric):
    rng = np.random.default_rng(4)
    ids = np.arange(5000, dtype=np.int64)
    codes = rng.integers(-2, 3, size=(5000, 5, 8)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(12, 5, 8)).astype(np.float32)
    index = SimilarityIndex(8, 5, metric, device="cuda", model_id="m")
    assert index.device == "cuda" and index.strategy == "knn"
    index.add(ids[:4000], codes[:4000])
    index.add(ids[4000:], codes[4000:])  # a second segment
    index.remove(ids[::7])
    keep = np.ones(5000, dtype=bool)
    keep[::7] = False
    for threshold in (0.0, 2.0, 3.0, math.inf):
        got = index.search(queries, threshold=threshold, limit=20)
        want = [brute_force_search(q, ids[keep], codes[keep], threshold=threshold, limit=20, metric=metric) for q in queries]
        assert got == want


def test_more_than_2048_samples_within_t_fall_back_to_the_host_without_truncation():
    rng = np.random.default_rng(5)
    ids = np.arange(3000, dtype=np.int64)
    codes = (rng.standard_normal((3000, 5, 16)) * 0.01).astype(np.float32)
    queries = (rng.standard_normal((3, 5, 16)) * 0.01).astype(np.float32)
    index = SimilarityIndex(16, 5, device="cuda", model_id="m")
    index.add(ids, codes)
    got = index.search(queries, threshold=1.0, min_pairs=25, limit=3000)
    assert [len(r) for r in got] == [3000] * 3
    assert got[1] == brute_force_search(queries[1], ids, codes, threshold=1.0, min_pairs=25, limit=3000)


def test_a_gpu_index_saves_from_its_host_copy_and_loads_back(tmp_path):
    rng = np.random.default_rng(6)
    index = SimilarityIndex(8, 5, device="cuda", model_id="m")
    index.add(np.arange(100), rng.standard_normal((100, 5, 8)).astype(np.float32), revision=3)
    index.save(tmp_path)
    loaded = SimilarityIndex.load(tmp_path, device="cuda")
    query = rng.standard_normal((2, 5, 8)).astype(np.float32)
    assert loaded.search(query, threshold=3.0) == index.search(query, threshold=3.0)
