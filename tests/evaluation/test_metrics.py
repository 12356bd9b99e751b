"""The metric code against cases computed by hand."""

import numpy as np
import pytest

from app.evaluation.metrics import (
    average_precision_at_k,
    ranking_metrics,
    set_metrics,
    top_k_by_score,
)


class TestAveragePrecision:
    def test_divides_by_the_relevant_items_in_the_corpus_when_fewer_than_ten(self):
        # hits at ranks 1 and 3: precision 1/1 and 2/3; two relevant items exist
        assert average_precision_at_k([True, False, True], total_relevant=2) == pytest.approx((1 + 2 / 3) / 2)

    def test_divides_by_ten_when_more_relevant_items_exist_than_the_depth(self):
        # same hits, but 130 relevant items exist: the ideal top 10 would hold 10 of them
        assert average_precision_at_k([True, False, True], total_relevant=130) == pytest.approx((1 + 2 / 3) / 10)

    def test_a_relevant_item_missed_counts_against_the_query(self):
        # one of three relevant items found, at rank 2
        assert average_precision_at_k([False, True], total_relevant=3) == pytest.approx(0.5 / 3)

    def test_ten_relevant_results_in_a_row_score_one(self):
        assert average_precision_at_k([True] * 10, total_relevant=50) == 1.0

    def test_only_the_first_k_results_count(self):
        assert average_precision_at_k([False] * 10 + [True], total_relevant=1) == 0.0

    def test_no_results_score_zero(self):
        assert average_precision_at_k([], total_relevant=4) == 0.0

    def test_undefined_without_relevant_items(self):
        with pytest.raises(ValueError, match="no relevant"):
            average_precision_at_k([False], total_relevant=0)


def test_ranking_metrics_by_hand():
    corpus = ["a", "a", "b", "b", "b", "c"]
    queries = ["a", "b", "c", "z"]
    ranked = [
        [2, 0, 1],  # a: miss, hit, hit -> P@1 0, AP (1/2 + 2/3) / 2
        [2, 3],  # b: two results only, both hits -> P@1 1, AP (1 + 1) / 3
        [],  # c: nothing returned -> 0
        [5],  # z: no relevant item in the corpus -> left out
    ]
    metrics = ranking_metrics(ranked, corpus, queries)
    assert metrics.queries == 3
    assert metrics.queries_without_relevant == 1
    assert metrics.precision_at_1 == pytest.approx(1 / 3)
    assert metrics.map_at_10 == pytest.approx(((1 / 2 + 2 / 3) / 2 + 2 / 3 + 0) / 3)
    assert metrics.hit_at_10 == pytest.approx(2 / 3)


def test_ranking_metrics_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 rankings for 1 queries"):
        ranking_metrics([[0], [0]], ["a"], ["a"])


class TestTopK:
    def test_higher_scores_first_and_ties_by_lower_index(self):
        scores = np.array([[1.0, 3.0, 3.0, 2.0]])
        assert top_k_by_score(scores, 3).tolist() == [[1, 2, 3]]

    def test_a_tie_across_the_cut_keeps_the_lower_indices(self):
        scores = np.array([[0.0, 1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
        assert top_k_by_score(scores, 2).tolist() == [[4, 1], [0, 1]]

    def test_asking_for_more_than_the_corpus_returns_everything(self):
        assert top_k_by_score(np.array([[0.2, 0.9]]), 10).tolist() == [[1, 0]]


class TestSetMetrics:
    def test_micro_averages_over_all_returned_pairs(self):
        corpus = ["a", "a", "b", "b", "b"]
        queries = ["a", "b", "b"]
        returned = [
            [0, 2],  # 1 of 2 right; 1 of the 2 a's found
            [],  # empty: adds nothing returned, misses all 3 b's
            [2, 3, 4, 4],  # 3 right (4 listed twice counts once)
        ]
        metrics = set_metrics(returned, corpus, queries)
        assert (metrics.returned, metrics.true_positives, metrics.relevant) == (5, 4, 2 + 3 + 3)
        assert metrics.precision == pytest.approx(4 / 5)
        assert metrics.recall == pytest.approx(4 / 8)
        assert metrics.f1 == pytest.approx(2 * 0.8 * 0.5 / 1.3)

    def test_a_query_without_relevant_questions_only_adds_false_positives(self):
        metrics = set_metrics([[0], [1]], ["a", "b"], ["a", "z"])
        assert (metrics.precision, metrics.recall) == (0.5, 1.0)

    def test_nothing_returned_is_precision_one_recall_zero(self):
        metrics = set_metrics([[], []], ["a", "b"], ["a", "b"])
        assert (metrics.precision, metrics.recall, metrics.f1, metrics.returned) == (1.0, 0.0, 0.0, 0)
