"""The exact threshold sweep against the brute-force rule (app/search/reference.py)."""

import numpy as np
import pytest

from app.evaluation.metrics import set_metrics
from app.evaluation.sweep import (
    ThresholdSweep,
    aligned_pair_distances,
    block_pair_distances,
    labelled_sweeps,
    nth_smallest,
    paired_sweeps,
)
from app.search.reference import brute_force_search, pair_distances


@pytest.fixture(scope="module")
def small_case():
    rng = np.random.default_rng(3)
    stored = rng.normal(size=(40, 3, 4)).astype(np.float32)
    queries = rng.normal(size=(12, 2, 4)).astype(np.float32)
    stored_labels = rng.choice(["a", "b", "c"], size=40).tolist()
    query_labels = rng.choice(["a", "b", "c", "d"], size=12).tolist()  # "d": a query with no relevant question
    return stored, queries, stored_labels, query_labels


def brute_force_counts(queries, stored, stored_labels, query_labels, metric, threshold, min_pairs):
    ids = np.arange(len(stored))
    returned = [
        [m.id for m in brute_force_search(q, ids, stored, threshold=threshold, min_pairs=min_pairs, limit=len(stored), metric=metric)]
        for q in queries
    ]
    return set_metrics(returned, stored_labels, query_labels)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_block_distances_equal_the_reference(small_case, metric):
    stored, queries, _, _ = small_case
    stored = stored.copy()
    stored[0, 1] = 0.0  # a zero vector: cosine distance 1 to everything
    blocks = block_pair_distances(queries, stored, metric)
    for i, query in enumerate(queries):
        expected = pair_distances(query, stored, metric).reshape(len(stored), -1)
        np.testing.assert_allclose(blocks[i], expected, rtol=1e-9, atol=1e-9)


def test_aligned_distances_pair_row_i_with_row_i(small_case):
    stored, _, _, _ = small_case
    left, right = stored[:5], stored[5:10]
    got = aligned_pair_distances(left, right, "l2")
    for i in range(5):
        np.testing.assert_allclose(got[i], pair_distances(left[i], right[i : i + 1], "l2").ravel())


def test_nth_smallest():
    distances = np.array([[5.0, 1.0, 3.0, 2.0]])
    assert {n: v.tolist() for n, v in nth_smallest(distances, [1, 2, 4]).items()} == {1: [1.0], 2: [2.0], 4: [5.0]}
    with pytest.raises(ValueError, match="outside 1..4"):
        nth_smallest(distances, [5])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("min_pairs", [1, 2, 6])
def test_sweep_counts_equal_the_brute_force_rule_at_every_candidate_threshold(small_case, metric, min_pairs):
    stored, queries, stored_labels, query_labels = small_case
    sweep = labelled_sweeps(queries, query_labels, stored, stored_labels, metric, [min_pairs])[min_pairs]
    assert sweep.total_relevant == sum(stored_labels.count(label) for label in query_labels)
    for index in range(0, len(sweep.candidates), 7):
        point = sweep.point(index)
        expected = brute_force_counts(queries, stored, stored_labels, query_labels, metric, point.threshold, min_pairs)
        assert (point.returned, point.true_positives, point.relevant) == (
            expected.returned, expected.true_positives, expected.relevant,
        )
        assert point.precision == pytest.approx(expected.precision)
        assert point.recall == pytest.approx(expected.recall)


def test_best_f1_is_the_best_over_all_thresholds_of_the_brute_force_rule(small_case):
    stored, queries, stored_labels, query_labels = small_case
    sweep = labelled_sweeps(queries, query_labels, stored, stored_labels, "l2", [2])[2]
    best = sweep.best_f1()
    # Every distinct 2nd-pair distance (and one above all) is a threshold where the sets change.
    values = np.unique(np.concatenate([sweep.relevant, sweep.irrelevant]).astype(np.float64))
    brute = max(
        brute_force_counts(queries, stored, stored_labels, query_labels, "l2", float(t) * (1 + 1e-6), 2).f1
        for t in values[::3]
    )
    assert best.f1 >= brute - 1e-12
    at_best = brute_force_counts(queries, stored, stored_labels, query_labels, "l2", best.threshold, 2)
    assert at_best.f1 == pytest.approx(best.f1)


def test_sweep_at_any_threshold_matches_brute_force(small_case):
    stored, queries, stored_labels, query_labels = small_case
    sweep = labelled_sweeps(queries, query_labels, stored, stored_labels, "l2", [1])[1]
    for threshold in (0.0, 1.0, 2.5, 4.0, 100.0):
        assert sweep.at(threshold) == brute_force_counts(queries, stored, stored_labels, query_labels, "l2", threshold, 1)


class TestConstructedSweep:
    """Relevant scores 1, 2, 3; irrelevant 2.5, 4, 5."""

    sweep = ThresholdSweep(np.array([3.0, 1.0, 2.0]), np.array([5.0, 2.5, 4.0]))

    def test_best_f1_takes_the_third_relevant_pair_and_separates_it_from_the_next_score(self):
        # t >= 3: P 3/4, R 1, F1 0.857 beats t in [2, 2.5): P 1, R 2/3, F1 0.8
        best = self.sweep.best_f1()
        assert (best.threshold, best.precision, best.recall) == (3.5, 0.75, 1.0)
        assert best.f1 == pytest.approx(6 / 7)

    def test_target_precision_takes_the_largest_recall_that_keeps_it(self):
        point = self.sweep.max_recall_at_precision(1.0)
        assert (point.threshold, point.true_positives, point.returned) == (2.25, 2, 2)
        assert self.sweep.max_recall_at_precision(0.7).recall == 1.0

    def test_curve_points_are_the_rule_at_their_thresholds(self):
        curve = self.sweep.curve(max_points=10)
        assert curve["threshold"] == [1.0, 1.5, 2.0, 2.5, 3.0]
        assert curve["precision"] == pytest.approx([1.0, 1.0, 1.0, 2 / 3, 0.75])
        assert curve["recall"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])
        for t, p, r in zip(*curve.values(), strict=True):
            assert (self.sweep.at(t).precision, self.sweep.at(t).recall) == pytest.approx((p, r))

    def test_no_relevant_pairs_has_no_operating_point(self):
        assert ThresholdSweep(np.array([]), np.array([1.0])).best_f1() is None


def test_paired_sweep_decides_each_pair_by_its_nth_distance():
    # 1-D codes, K = 2 each side: pair distances are |a_i - b_j|
    left = np.array([[[0.0], [10.0]], [[0.0], [1.0]], [[0.0], [0.1]]])
    right = np.array([[[0.5], [20.0]], [[3.0], [3.5]], [[0.2], [5.0]]])
    sweeps = paired_sweeps(left, right, [True, False, True], "l2", [1, 2])
    assert sweeps[1].relevant.tolist() == pytest.approx([0.1, 0.5])  # smallest distance of pairs 3 and 1
    assert sweeps[1].irrelevant.tolist() == [2.0]
    assert sweeps[2].relevant.tolist() == pytest.approx([0.2, 9.5])  # 2nd smallest
