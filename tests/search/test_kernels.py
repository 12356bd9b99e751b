"""The float32 distance kernels the block reads use, against float64 arithmetic."""

from __future__ import annotations

import numpy as np

from app.search.bounds import FloatErrorModel
from app.search.kernels import inner_products_at, squared_distances, squared_distances_at


def test_rows_read_in_place_give_the_distances_of_a_gathered_copy_within_the_error_bound():
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((500, 128)).astype(np.float32)
    queries = rng.standard_normal((5, 128)).astype(np.float32)
    rows = np.sort(rng.choice(500, 140, replace=False))  # scattered, some runs
    squared = squared_distances_at(queries, vectors, rows)
    assert squared.shape == (5, 140) and squared.dtype == np.float32
    assert np.array_equal(squared, squared_distances(queries, np.ascontiguousarray(vectors[rows])))
    exact = ((queries[:, None, :].astype(np.float64) - vectors[rows][None].astype(np.float64)) ** 2).sum(-1)
    slack = FloatErrorModel(128).squared_slack(np.linalg.norm(queries, axis=1)[:, None], np.linalg.norm(vectors, axis=1).max())
    assert (np.abs(squared - exact) <= slack).all()
    dots = inner_products_at(queries, vectors, rows)
    assert np.allclose(dots, queries.astype(np.float64) @ vectors[rows].T.astype(np.float64), atol=1e-4)
    assert squared_distances_at(queries, vectors, rows[:0]).shape == (5, 0)
