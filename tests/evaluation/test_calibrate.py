"""Choosing t and min_pairs on constructed data whose answer is known."""

import numpy as np
import pytest

from app.evaluation.calibrate import (
    MEAN_CODE,
    CalibrationError,
    Sweeps,
    calibrate,
    choose,
    equal_precision_comparison,
    holdout_split,
)
from app.evaluation.sweep import ThresholdSweep, labelled_sweeps
from app.model.data import Corpus
from app.model.train import split_train_validation


def outlier_case():
    """1-D codes. Stored (K = 2): label a near 0, label b near 10. Queries (Kq = 3): query a has two
    codes on its cluster and one outlier right on cluster b; query b sits on its cluster."""
    stored = np.array([[[0.0], [0.2]], [[0.1], [0.3]], [[10.0], [10.2]], [[10.1], [10.3]]])
    queries = np.array([[[0.5], [0.6], [10.05]], [[9.5], [9.6], [9.7]]])
    return stored, ["a", "a", "b", "b"], queries, ["a", "b"]


def test_an_outlier_code_fools_any_of_the_pairs_and_three_pairs_see_through_it():
    stored, stored_labels, queries, query_labels = outlier_case()
    sweeps = labelled_sweeps(queries, query_labels, stored, stored_labels, "l2", [1, 3])
    # Smallest pair distances: relevant 0.3, 0.2, 0.3, 0.4; the outlier puts query a at 0.05 from both
    # b questions, so no threshold of any-of-6 keeps them out: best F1 at t >= 0.4, P 4/6, R 1.
    any_best = sweeps[1].best_f1()
    assert (any_best.precision, any_best.recall, any_best.f1) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert any_best.threshold == pytest.approx((0.4 + 9.2) / 2)
    # Third smallest pair distances: relevant 0.5, 0.4, 0.5, 0.6; irrelevant 9.4 and more.
    chosen = choose(Sweeps(sweeps, sweeps[1], 6), target_precision=None)
    assert (chosen.min_pairs, chosen.precision, chosen.recall) == (3, 1.0, 1.0)
    assert chosen.threshold == pytest.approx((0.6 + 9.4) / 2)


def constructed_sweeps() -> Sweeps:
    # n = 1 reaches F1 6/7 at t = 3.5; n = 2 reaches F1 1 at t = 2.5 (all three relevant, no irrelevant)
    return Sweeps(
        by_min_pairs={
            1: ThresholdSweep(np.array([1.0, 2.0, 3.0]), np.array([2.5, 4.0, 5.0]), min_pairs=1),
            2: ThresholdSweep(np.array([1.5, 2.0, 2.2]), np.array([2.8, 4.0]), min_pairs=2),
        },
        mean=ThresholdSweep(np.array([1.0, 4.5, 6.0]), np.array([2.0, 3.0, 7.0]), min_pairs=1),
        pairs=4,
    )


def test_best_f1_picks_the_min_pairs_and_threshold_of_highest_f1():
    chosen = choose(constructed_sweeps(), target_precision=None)
    assert (chosen.min_pairs, chosen.threshold, chosen.f1) == (2, 2.5, 1.0)


def test_equal_objectives_keep_fewer_pairs():
    sweeps = constructed_sweeps()
    sweeps.by_min_pairs[3] = sweeps.by_min_pairs[2]
    assert choose(sweeps, target_precision=None).min_pairs == 2


def test_target_precision_picks_the_largest_recall_reaching_it():
    sweeps = constructed_sweeps()
    del sweeps.by_min_pairs[2]
    chosen = choose(sweeps, target_precision=0.9)  # P 1 at t in [2, 2.5): recall 2/3; t >= 3 has P 0.75
    assert (chosen.min_pairs, chosen.threshold, chosen.recall) == (1, 2.25, pytest.approx(2 / 3))


def test_unreachable_target_precision_is_an_error_naming_the_best():
    sweeps = Sweeps({1: ThresholdSweep(np.array([2.0]), np.array([1.0]))}, ThresholdSweep(np.array([1.0]), []), 1)
    with pytest.raises(CalibrationError, match="highest reached is 0.500"):
        choose(sweeps, target_precision=0.9)


def test_calibration_record_holds_the_choice_the_variants_and_the_comparison():
    result = calibrate(
        constructed_sweeps(), target_precision=None, model_id="m1", data={"kind": "labels"}, split={"method": "x"}
    )
    record = result.record
    assert record["chosen"]["variant"] == "2-of-4" and record["chosen"]["threshold"] == 2.5
    assert record["n_of_pairs"] == 2 and result.n_of_pairs == 2
    assert [row["variant"] for row in record["variants"]] == [MEAN_CODE, "any-of-4", "2-of-4"]
    levels = {row["precision"]: row["recall"] for row in record["equal_precision"]["levels"]}
    # precision 1: the mean code keeps only its first relevant pair (the next score is irrelevant)
    assert levels[1.0] == {MEAN_CODE: pytest.approx(1 / 3), "any-of-4": pytest.approx(2 / 3), "2-of-4": 1.0}


def test_equal_precision_comparison_says_whether_sampling_raised_recall():
    mean = ThresholdSweep(np.array([1.0, 3.0]), np.array([2.0]))  # P 1 -> R 1/2; P 2/3 -> R 1
    sampled = ThresholdSweep(np.array([1.0, 1.5]), np.array([2.0]))  # P 1 -> R 1
    comparison = equal_precision_comparison(mean, {"any-of-25": sampled}, levels=(0.5, 0.9))
    # The given levels, and each variant's best-F1 precision (mean code: 2/3, rounded down; sampled: 1)
    assert comparison["levels"] == [
        {"precision": 0.5, "recall": {MEAN_CODE: 1.0, "any-of-25": 1.0}},
        {"precision": 0.666, "recall": {MEAN_CODE: 1.0, "any-of-25": 1.0}},
        {"precision": 0.9, "recall": {MEAN_CODE: 0.5, "any-of-25": 1.0}},
        {"precision": 1.0, "recall": {MEAN_CODE: 0.5, "any-of-25": 1.0}},
    ]
    assert comparison["versus_mean_code"]["any-of-25"] == {
        "levels_compared": 4, "levels_with_higher_recall": 2, "mean_recall_gain": 0.25,
    }


class TestHoldoutSplit:
    corpus = Corpus(texts=[f"q{i}" for i in range(50)], labels=["x"] * 50, sha256="abc", path="c.csv")

    def test_the_models_own_corpus_holds_out_the_trainers_validation_rows(self):
        config = {"data": {"sha256": "abc"}, "seed": 7, "settings": {"training": {"val_fraction": 0.1}}}
        stored, queries, split = holdout_split(self.corpus, config, fraction=0.3, seed=0, max_queries=None)
        expected_train, expected_val = split_train_validation(50, 0.1, 7)
        assert stored.tolist() == expected_train.tolist() and queries.tolist() == expected_val.tolist()
        assert "validation" in split["method"]

    def test_another_corpus_is_split_at_random_by_the_seed(self):
        config = {"data": {"sha256": "other"}, "seed": 7, "settings": {"training": {"val_fraction": 0.1}}}
        stored, queries, split = holdout_split(self.corpus, config, fraction=0.2, seed=1, max_queries=None)
        assert (len(stored), len(queries)) == (40, 10)
        assert not set(stored) & set(queries)
        again = holdout_split(self.corpus, config, fraction=0.2, seed=1, max_queries=None)[1]
        assert queries.tolist() == again.tolist()
        assert holdout_split(self.corpus, config, fraction=0.2, seed=2, max_queries=None)[1].tolist() != queries.tolist()

    def test_max_queries_samples_the_held_out_part(self):
        config = {"data": {}, "seed": 0, "settings": {"training": {"val_fraction": 0.1}}}
        stored, queries, split = holdout_split(self.corpus, config, fraction=0.5, seed=0, max_queries=5)
        assert len(queries) == 5 and len(stored) == 25 and split["queries_sampled"] == 5
