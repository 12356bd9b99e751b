"""The top answer a desk sees: answered share, precision of the answered tops, out-of-scope no-match."""

import numpy as np
import pytest

from app.evaluation.calibrate import (
    MEAN_CODE,
    CalibrationError,
    Sweeps,
    calibrate,
    calibrate_with_floor,
    choose_top,
    drop_out_of_scope,
    merge_sweeps,
    out_of_scope_labels,
    top_equal_precision_comparison,
)
from app.evaluation.sweep import (
    MIN_GROUPS_FOR_GROUP_BOUND,
    ThresholdSweep,
    TopAnswerSweep,
    label_judge,
    labelled_rule_sweeps,
    top_events,
    wilson_lower_bound,
)
from app.search.reference import brute_force_search


def hand_made():
    """Closest-pair distances of 4 queries to 3 stored questions labelled a, b, c (min_pairs 1).
    q0 (a): nearest a at 0.1, right. q1 (b): nearest a at 0.2, wrong. q2 (c): nearest c at 0.4,
    right. q3 (z, a label nothing stored has: out of scope): nearest at 0.35, a wrong answer."""
    d = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.8], [0.7, 0.6, 0.4], [0.35, 0.9, 0.9]])
    judge, in_scope = label_judge(["a", "b", "c", "z"], ["a", "b", "c"])
    right = judge(slice(0, 4))[1]
    return TopAnswerSweep(*top_events(d, d, right), in_scope)


def test_answered_share_and_precision_of_answered_tops_on_a_hand_made_distance_matrix():
    sweep = hand_made()
    assert (sweep.queries, sweep.out_of_scope) == (3, 1)
    nothing = sweep.at(0.05)
    assert (nothing.answered, nothing.answered_share, nothing.precision, nothing.out_of_scope_no_match) == (0, 0, None, 1)
    at = sweep.at(0.25)  # q0 right, q1 wrong; q3 not yet answered
    assert (at.answered, at.right, at.answered_share, at.precision) == (2, 1, pytest.approx(2 / 3), 0.5)
    assert at.out_of_scope_no_match == 1.0 and at.net == 0.0
    at = sweep.at(0.5)  # all in-scope answered (2 of 3 right); q3 got a wrong answer
    assert (at.answered, at.right, at.out_of_scope_answered, at.out_of_scope_no_match) == (3, 2, 1, 0.0)
    assert at.precision == pytest.approx(2 / 3) and at.net == pytest.approx((2 - 1 - 1) / 4)
    assert at.as_dict()["precision_with_out_of_scope"] == pytest.approx(2 / 4)


def test_the_best_top_point_reaches_the_target_and_separates_the_next_event():
    sweep = hand_made()
    best = sweep.best(0.9)  # only t in [0.1, 0.2) has precision 1
    assert (best.answered, best.right, best.threshold) == (1, 1, pytest.approx(0.15))
    assert sweep.best(None).threshold == pytest.approx(0.15)  # net 1/4, the most anywhere
    assert sweep.max_answered_at_precision(0.6).answered == 3  # precision 2/3 with all three answered
    assert sweep.best(1.01) is None and sweep.highest_precision() == 1.0


def test_with_several_pairs_needed_the_top_changes_as_the_threshold_grows():
    # Stored 0 (wrong): closest 0.1, 2nd pair 0.3. Stored 1 (right): closest 0.05, 2nd 0.5.
    # Stored 2 (wrong): closest 0.2, 2nd 0.4: it enters, but 0 is closer, so the top stays 0.
    nth = np.array([[0.3, 0.5, 0.4]])
    closest = np.array([[0.1, 0.05, 0.2]])
    right = np.array([[False, True, False]])
    query, score, is_right = top_events(nth, closest, right)
    assert score.tolist() == pytest.approx([0.3, 0.5]) and is_right.tolist() == [False, True]
    sweep = TopAnswerSweep(query, score, is_right, np.array([True]), min_pairs=2)
    assert (sweep.at(0.35).answered, sweep.at(0.35).right) == (1, 0)
    assert (sweep.at(0.45).right, sweep.at(0.6).right) == (0, 1)


@pytest.mark.parametrize("min_pairs", [1, 2, 5])
def test_the_top_answers_are_the_services_first_results(min_pairs):
    rng = np.random.default_rng(min_pairs)
    stored = rng.normal(size=(40, 3, 4))
    queries = rng.normal(size=(15, 3, 4))
    stored_labels = [str(i % 5) for i in range(40)]
    query_labels = [str(i % 6) for i in range(15)]  # label 5 is out of scope
    _, tops = labelled_rule_sweeps(queries, query_labels, stored, stored_labels, "l2", [min_pairs])
    sweep = tops[min_pairs]
    assert sweep.out_of_scope == sum(label == "5" for label in query_labels)
    for threshold in (1.5, 2.5, 3.5):
        answered = right = oos_answered = 0
        for q, label in zip(queries, query_labels, strict=True):
            first = brute_force_search(q, np.arange(40), stored, threshold=threshold, min_pairs=min_pairs, limit=1)
            if first and label == "5":
                oos_answered += 1
            elif first:
                answered += 1
                right += stored_labels[first[0].id] == label
        at = sweep.at(threshold)
        assert (at.answered, at.right, at.out_of_scope_answered) == (answered, right, oos_answered), threshold
        subset = np.array([0, 3, 5, 11])
        assert sweep.at(threshold, subset).queries == sum(query_labels[i] != "5" for i in subset)


def test_out_of_scope_labels_hold_out_whole_labels_seeded():
    labels = [f"l{i % 10}" for i in range(100)]
    held = out_of_scope_labels(labels, 0.2, seed=3)
    assert len(held) == 2 and held == out_of_scope_labels(labels, 0.2, seed=3)
    assert out_of_scope_labels(labels, 0.0, seed=3) == []
    assert len(out_of_scope_labels(["a", "b"], 0.9, seed=0)) == 1  # never every label
    with pytest.raises(CalibrationError, match="at least 2 labels"):
        out_of_scope_labels(["a", "a"], 0.2, seed=0)
    stored, described = drop_out_of_scope(np.arange(50, 100), labels, np.arange(50), 0.2, seed=3)
    assert not {labels[i] for i in stored} & set(held)
    assert described["queries"] == 10 and described["stored_removed"] == 10 and described["labels"] == held


def sweeps_with_tops():
    """Two min_pairs options with different top answers, over the hand-made queries."""
    base = hand_made()
    # n = 2 answers q0 and q2 right from 0.3 on and never answers q1 or q3.
    better = TopAnswerSweep(np.array([0, 2]), np.array([0.3, 0.3]), np.array([True, True]), base.in_scope, min_pairs=2)
    pairwise = {1: ThresholdSweep(np.array([0.1, 0.3, 0.4]), np.array([0.2, 0.35])),
                2: ThresholdSweep(np.array([0.3, 0.3]), np.array([0.9]), min_pairs=2)}
    return Sweeps(pairwise, pairwise[1], 4, {1: base, 2: better}, base)


def test_choose_top_takes_the_most_net_right_answers_at_the_target():
    chosen = choose_top(sweeps_with_tops(), 0.9, z=0)
    assert (chosen.min_pairs, chosen.answered, chosen.right) == (2, 2, 2)
    with pytest.raises(CalibrationError, match="highest reached is 1.000"):
        choose_top(sweeps_with_tops(), 1.5, z=0)
    # Two right answers out of two are too few for the lower bound of the precision to reach 0.9.
    with pytest.raises(CalibrationError, match=r"highest reached is 0.42\d \(the lower bound"):
        choose_top(sweeps_with_tops(), 0.9)


def test_the_precision_bound_keeps_a_lucky_handful_from_reaching_the_target():
    assert wilson_lower_bound(9, 10, 1.645) == pytest.approx(0.652, abs=1e-3)
    assert wilson_lower_bound(190, 200, 1.645) == pytest.approx(0.918, abs=1e-3)
    # 3 right answers first, then answers right 7 times in 10: 0.8 is reached only by the handful.
    scores = np.arange(103, dtype=np.float32)
    right = np.array([True] * 3 + [i % 10 < 7 for i in range(100)])
    sweep = TopAnswerSweep(np.arange(103), scores, right, np.ones(103, dtype=bool))
    assert sweep.best(0.8).answered >= 3
    assert sweep.best(0.8, z=1.645) is None
    assert sweep.best(0.6, z=1.645).answered > 50


def test_calibration_record_for_the_top_objective_holds_both_views():
    result = calibrate(sweeps_with_tops(), target_precision=0.9, model_id="m", data={}, split={}, objective="top", z=0)
    record = result.record
    assert record["objective"] == "top" and record["chosen"]["min_pairs"] == 2
    assert record["chosen"]["top"]["answered_share"] == pytest.approx(2 / 3)
    assert record["chosen"]["top"]["out_of_scope_no_match"] == 1.0
    assert record["chosen"]["precision"] == 1.0 and record["chosen"]["recall"] == 1.0  # pairwise, n = 2 at t > 0.3
    assert [row["variant"] for row in record["variants"]] == [MEAN_CODE, "any-of-4", "2-of-4"]
    comparison = record["top_equal_precision"]
    assert set(comparison["versus_mean_code"]) == {"any-of-4", "2-of-4"}
    # The pairwise objective still reports the top answers at its own choice.
    pairs = calibrate(sweeps_with_tops(), target_precision=None, model_id="m", data={}, split={}, objective="pairs")
    assert pairs.record["objective"] == "pairs" and pairs.record["chosen"]["top"] is not None


def test_top_equal_precision_comparison_counts_where_sampling_answers_more():
    mean = hand_made()
    sampled = TopAnswerSweep(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.2]), np.array([True, True, True]), mean.in_scope)
    comparison = top_equal_precision_comparison(mean, {"any-of-25": sampled}, levels=(0.5, 0.9))
    by_level = {row["precision"]: row["answered_share"] for row in comparison["levels"]}
    assert by_level[0.9] == {MEAN_CODE: pytest.approx(1 / 3), "any-of-25": 1.0}
    assert by_level[0.5] == {MEAN_CODE: 1.0, "any-of-25": 1.0}
    verdict = comparison["versus_mean_code"]["any-of-25"]
    assert verdict["levels_answering_more"] >= 1 and verdict["levels_answering_fewer"] == 0


def interleaved_out_of_scope(offset: float = 0.05) -> TopAnswerSweep:
    """10 in-scope queries answered right at 0.1, 0.2, ... 1.0 and 10 out-of-scope queries answered
    (wrongly) between them, `offset` after each (0.15, 0.25, ... 1.05)."""
    scores = np.concatenate([np.arange(1, 11) / 10, np.arange(1, 11) / 10 + offset]).astype(np.float32)
    in_scope = np.array([True] * 10 + [False] * 10)
    return TopAnswerSweep(np.arange(20), scores, in_scope.copy(), in_scope)


def test_a_floor_on_out_of_scope_silence_keeps_the_rule_from_answering_them():
    sweep = interleaved_out_of_scope()
    loose = sweep.best(0.4)
    assert (loose.answered, loose.out_of_scope_answered) == (10, 9)  # precision 10/19 >= 0.4
    strict = sweep.best(0.4, min_no_match=0.8)
    assert (strict.answered, strict.out_of_scope_answered) == (3, 2)  # 8 of 10 out of scope unanswered
    assert strict.out_of_scope_no_match == pytest.approx(0.8)
    # By its lower bound, 10 out-of-scope queries are too few to show 80% silence at all.
    assert sweep.best(0.4, z=1.645, min_no_match=0.8) is None


def test_calibrate_records_the_floor_and_says_when_it_cannot_be_reached():
    pairwise = ThresholdSweep(np.arange(1, 11) / 10, np.arange(1, 11) / 10 + 0.05)
    sweeps = Sweeps({1: pairwise}, pairwise, 1, {1: interleaved_out_of_scope()}, interleaved_out_of_scope())
    record = calibrate(sweeps, target_precision=0.4, model_id="m", data={}, split={}, objective="top", z=0,
                       min_no_match=0.8).record
    assert record["min_out_of_scope_no_match"] == 0.8
    assert record["chosen"]["top"]["out_of_scope_no_match"] >= 0.8
    # An out-of-scope query answered before any in-scope one: no threshold keeps 95% of them silent.
    early = Sweeps({1: pairwise}, pairwise, 1, {1: interleaved_out_of_scope(-0.05)}, interleaved_out_of_scope(-0.05))
    assert calibrate(early, target_precision=0.4, model_id="m", data={}, split={}, objective="top", z=0).top.answered == 10
    with pytest.raises(CalibrationError, match="with at least 95% of out-of-scope questions unanswered"):
        calibrate(early, target_precision=0.4, model_id="m", data={}, split={}, objective="top", z=0, min_no_match=0.95)
    # What `qsim calibrate` and `qsim train` do then: the precision target alone, and the record says so.
    fallback = calibrate_with_floor(early, min_no_match=0.95, target_precision=0.4, model_id="m", data={}, split={},
                                    objective="top", z=0)
    assert fallback.top.answered == 10 and fallback.record["no_match_reached"] is False
    assert fallback.record["min_out_of_scope_no_match"] == 0.95 and "unanswered" in fallback.record["note"]
    kept = calibrate_with_floor(sweeps, min_no_match=0.8, target_precision=0.4, model_id="m", data={}, split={},
                                objective="top", z=0)
    assert "no_match_reached" not in kept.record and kept.top.out_of_scope_answered == 2


def test_pooled_draws_count_each_draws_queries_and_pairs():
    one, two = sweeps_with_tops(), sweeps_with_tops()
    pooled = merge_sweeps([one, two])
    assert pooled.tops[1].queries == 2 * one.tops[1].queries
    assert pooled.tops[1].out_of_scope == 2 * one.tops[1].out_of_scope
    for threshold in (0.05, 0.25, 0.36, 1.0):
        alone, both = one.tops[1].at(threshold), pooled.tops[1].at(threshold)
        assert (both.answered, both.right, both.out_of_scope_answered) == (
            2 * alone.answered, 2 * alone.right, 2 * alone.out_of_scope_answered)
        assert pooled.by_min_pairs[1].at(threshold).as_dict()["precision"] == one.by_min_pairs[1].at(threshold).as_dict()["precision"]
    assert choose_top(pooled, 0.9, z=0).threshold == choose_top(one, 0.9, z=0).threshold
    # The same questions twice are not twice the evidence: the lower bounds count them once.
    assert pooled.tops[1].copies == 2
    assert np.allclose(pooled.tops[1].overall_precision_bound(1.645), one.tops[1].overall_precision_bound(1.645))
    assert np.allclose(pooled.tops[1].no_match_bound(1.645), one.tops[1].no_match_bound(1.645))
    point = pooled.tops[1].at(0.36)
    assert point.precision_bound(1.645) == pytest.approx(one.tops[1].at(0.36).precision_bound(1.645))


def test_pooled_draws_keep_each_draws_queries_apart():
    """Two draws that differ: a query in scope in one draw and out of scope in the other is judged by
    its own draw's scope (offsets keep the draws' queries apart)."""
    first = TopAnswerSweep(np.array([0, 1]), np.array([0.1, 0.2]), np.array([True, False]), np.array([True, False]))
    second = TopAnswerSweep(np.array([0, 1]), np.array([0.1, 0.2]), np.array([False, True]), np.array([False, True]))
    pairwise = ThresholdSweep(np.array([0.1]), np.array([0.2]))
    pooled = merge_sweeps([Sweeps({1: pairwise}, pairwise, 1, {1: first}, first),
                           Sweeps({1: pairwise}, pairwise, 1, {1: second}, second)]).tops[1]
    at = pooled.at(0.15)  # only the first events (score 0.1) pass
    assert (at.queries, at.out_of_scope) == (2, 2)
    assert (at.answered, at.right, at.out_of_scope_answered) == (1, 1, 1)
    everything = pooled.at(1.0)
    assert (everything.answered, everything.right, everything.out_of_scope_answered) == (2, 2, 2)


def labels_that_fail_together(groups: int = 20, per_group: int = 20) -> TopAnswerSweep:
    """In-scope queries each answered rightly at i/1000; out-of-scope queries in `groups` held-out
    labels, every query of label g answered (wrongly) at once, at 0.05 + g/100: at t, the labels
    below t are answered whole, as a label a model confuses with a stored one is."""
    in_scope_scores = np.arange(1, 401) / 1000.0
    label_scores = np.repeat(0.05 + np.arange(groups) / 100.0, per_group)
    scores = np.concatenate([in_scope_scores, label_scores])
    in_scope = np.arange(len(scores)) < len(in_scope_scores)
    groups_of = np.concatenate([np.full(len(in_scope_scores), -1), np.repeat(np.arange(groups), per_group)])
    return TopAnswerSweep(np.arange(len(scores)), scores, in_scope.copy(), in_scope, groups=groups_of)


def test_out_of_scope_questions_of_one_label_count_as_one_piece_of_evidence():
    sweep = labels_that_fail_together()
    assert sweep.out_of_scope_groups == 20 and sweep.no_match_bound_kind == "groups"
    by_questions = TopAnswerSweep(sweep.query, sweep.score, sweep.right, sweep.in_scope)
    at = np.searchsorted(sweep.candidates, 0.075)  # 3 of 20 labels answered: 85% of 400 silent
    assert sweep.no_match_bound(0)[at] == pytest.approx(0.85)
    # 400 independent questions would show 80% silence; 20 labels, all-or-nothing each, do not.
    assert by_questions.no_match_bound(1.645)[at] > 0.8 > sweep.no_match_bound(1.645)[at]
    # The ratio estimator's cluster-robust error: 0.85 less 1.645 * sqrt(20/19 * 20 * 0.85 * 0.15 * 20**2) / 400.
    assert sweep.no_match_bound(1.645)[at] == pytest.approx(0.85 - 1.645 * np.sqrt(20 / 19 * 0.85 * 0.15 / 20))
    by_questions_rule, by_labels_rule = by_questions.best(0.5, z=1.645, min_no_match=0.8), sweep.best(0.5, z=1.645, min_no_match=0.8)
    assert by_labels_rule.out_of_scope_answered < by_questions_rule.out_of_scope_answered
    assert by_labels_rule.threshold < by_questions_rule.threshold


def test_labels_of_one_question_each_bound_as_the_questions_do():
    in_scope = np.arange(800) < 400
    scores = np.concatenate([np.arange(1, 401) / 1000.0, np.linspace(0.05, 0.5, 400)])
    sweep = TopAnswerSweep(np.arange(800), scores, in_scope.copy(), in_scope, groups=np.arange(800))
    by_questions = TopAnswerSweep(np.arange(800), scores, in_scope.copy(), in_scope)
    assert np.allclose(sweep.no_match_bound(1.645), by_questions.no_match_bound(1.645), atol=0.01)


def test_few_held_out_labels_are_bounded_by_their_questions():
    """Below MIN_GROUPS_FOR_GROUP_BOUND labels a cluster-robust error is itself too noisy to use."""
    sweep = labels_that_fail_together(groups=MIN_GROUPS_FOR_GROUP_BOUND - 1, per_group=40)
    by_questions = TopAnswerSweep(sweep.query, sweep.score, sweep.right, sweep.in_scope)
    assert sweep.no_match_bound_kind == "questions"
    assert np.array_equal(sweep.no_match_bound(1.645), by_questions.no_match_bound(1.645))


def test_pooled_draws_keep_a_label_held_out_twice_as_one_group():
    rng = np.random.default_rng(5)
    stored_labels = [label for label in "abcdefghijkl" for _ in range(3)]
    query_labels = [label for label in "abcdefghijkl" for _ in range(2)]
    stored, queries = rng.normal(size=(36, 2, 4)), rng.normal(size=(24, 2, 4))

    def draw(held: str) -> Sweeps:
        kept = [i for i, label in enumerate(stored_labels) if label not in held]
        by_n, tops = labelled_rule_sweeps(queries, query_labels, stored[kept], [stored_labels[i] for i in kept], "l2")
        return Sweeps(by_n, by_n[1], 4, tops, tops[1])

    first, second = draw("abcdef"), draw("defghi")
    assert first.tops[1].out_of_scope_groups == 6
    pooled = merge_sweeps([first, second]).tops[1]
    assert pooled.out_of_scope == 24 and pooled.out_of_scope_groups == 9  # d, e, f held out in both


def test_calibration_record_says_what_the_silence_bound_counted():
    pairwise = ThresholdSweep(np.arange(1, 11) / 10, np.arange(1, 11) / 10 + 0.05)
    tops = labels_that_fail_together()
    record = calibrate(Sweeps({1: pairwise}, pairwise, 1, {1: tops}, tops), target_precision=0.5, model_id="m",
                       data={}, split={}, objective="top", min_no_match=0.7).record
    chosen = record["chosen"]["top"]
    assert chosen["no_match_bound_counts"] == "groups" and chosen["out_of_scope_groups"] == 20
    assert 0.7 <= chosen["no_match_lower_bound"] < chosen["out_of_scope_no_match"]
