"""The brute-force reference on cases small enough to check by hand."""

import math

import numpy as np
import pytest

from app.search.reference import Match, brute_force_search, pair_distances


def test_any_of_the_pairs_within_threshold_makes_a_match():
    query = np.array([[0.0, 0.0], [10.0, 10.0]])
    ids = np.array([7, 8, 9])
    stored = np.array([
        [[0.0, 0.2], [5.0, 5.0]],     # one pair at 0.2
        [[10.0, 10.1], [0.0, 0.1]],   # two pairs: 0.1 and 0.1
        [[3.0, 3.0], [4.0, 4.0]],     # none within 1
    ])
    result = brute_force_search(query, ids, stored, threshold=1.0)
    assert result == [Match(8, pytest.approx(0.1), 2), Match(7, pytest.approx(0.2), 1)]


def test_min_pairs_and_limit_and_ordering_by_distance_then_count_then_id():
    query = np.zeros((1, 1))
    ids = np.array([3, 1, 2, 4])
    stored = np.array([[[0.5], [0.5]], [[0.5], [2.0]], [[0.5], [0.6]], [[0.5], [0.5]]])
    assert brute_force_search(query, ids, stored, threshold=1.0) == [
        Match(2, 0.5, 2), Match(3, 0.5, 2), Match(4, 0.5, 2), Match(1, 0.5, 1),
    ]
    assert [m.id for m in brute_force_search(query, ids, stored, threshold=1.0, min_pairs=2, limit=2)] == [2, 3]


def test_threshold_is_inclusive():
    assert brute_force_search(np.zeros((1, 1)), np.array([1]), np.array([[[1.0]]]), threshold=1.0) == [Match(1, 1.0, 1)]


def test_infinite_threshold_ranks_everything_by_closest_pair():
    stored = np.array([[[5.0]], [[1.0]], [[3.0]]])
    result = brute_force_search(np.zeros((1, 1)), np.array([10, 11, 12]), stored, threshold=math.inf, limit=2)
    assert [m.id for m in result] == [11, 12]


def test_cosine_distance_and_zero_vectors():
    d = pair_distances(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[[0.0, 2.0], [-1.0, 0.0]]]), "cosine")
    assert d[0].tolist() == [[1.0, 2.0], [1.0, 1.0]]
