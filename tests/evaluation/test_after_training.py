"""Calibration for the top answer on held-out data: the target holds on another split, and
calibrate_after_training with labels, pairs, teacher vectors or none of them."""

import csv
import json
import shutil

import numpy as np
import pytest

from app.evaluation.calibrate import (
    FALLBACK_QUANTILE,
    CalibrationError,
    calibrate,
    calibrate_after_training,
    self_augmented,
    sweep_labelled,
    teacher_judge,
)
from app.model.data import Corpus, PairsCorpus, read_corpus
from app.model.encoder import QuestionEncoder
from app.model.text import normalize
from app.model.train import split_train_validation
from tests.conftest import BANKING77_TRAIN, TINY_PER_INTENT


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


@pytest.fixture(scope="module")
def labelled(tiny_corpus_file):
    return read_corpus(tiny_corpus_file, "text", "category")


@pytest.fixture(scope="module")
def validation_rows(tiny_model_dir, labelled):
    """The trainer's validation rows, as `qsim train` computes them."""
    config = json.loads((tiny_model_dir / "config.json").read_text())
    return split_train_validation(len(labelled), config["settings"]["training"]["val_fraction"], config["seed"], labelled.texts)[1]


@pytest.fixture(scope="module")
def unseen_rows(tiny_corpus_rows):
    """BANKING77 training questions of the tiny corpus's intents that the tiny model never saw (the
    ones after the first TINY_PER_INTENT of each intent), at most 40 per intent."""
    intents = {row["category"] for row in tiny_corpus_rows}
    seen: dict[str, int] = {}
    rows = []
    with BANKING77_TRAIN.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in intents:
                seen[row["category"]] = seen.get(row["category"], 0) + 1
                if TINY_PER_INTENT < seen[row["category"]] <= TINY_PER_INTENT + 40:
                    rows.append(row)
    return rows


def written(model_dir):
    return json.loads((model_dir / "config.json").read_text())["settings"]["search"]


def test_the_target_precision_chosen_on_one_split_holds_on_another(tiny_encoder, tiny_corpus_rows, unseen_rows):
    """Questions the tiny model never saw, split in two: calibrate on one, measure on the other."""
    order = np.random.default_rng(5).permutation(len(unseen_rows))
    first, second = ([unseen_rows[i] for i in part] for part in np.array_split(order, 2))
    stored_texts = [r["text"] for r in tiny_corpus_rows]
    stored_labels = [r["category"] for r in tiny_corpus_rows]
    stored = tiny_encoder.encode(stored_texts, tiny_encoder.samples_per_question)

    def sweeps(rows):
        return sweep_labelled(tiny_encoder, stored_texts, stored_labels, [r["text"] for r in rows],
                              [r["category"] for r in rows], [1, 2, 3, 5, 8, 13], stored=stored)

    on_first = sweeps(first)
    # The target: the highest precision (in steps of 0.05) that the calibration reaches on the first
    # split while answering a tenth of its queries, so that the check below measures enough answers
    # whatever the tiny model's quality.
    for target in np.round(np.arange(0.95, 0.04, -0.05), 2):
        try:
            chosen = calibrate(on_first, target_precision=target, model_id="m", data={}, split={}, objective="top").top
        except CalibrationError:
            continue
        if chosen.answered_share >= 0.1:
            break
    assert chosen.precision_bound(1.645) >= target and chosen.answered_share >= 0.1
    check = sweeps(second).tops[chosen.min_pairs].at(chosen.threshold)
    assert check.answered >= 15, check
    tolerance = 2.5 * np.sqrt(target * (1 - target) / check.answered)  # binomial sampling, about 2.5 sd
    assert check.precision >= target - tolerance, (target, check, tolerance)


def test_after_training_with_labels_writes_the_defaults_and_holds_labels_out(model_copy, labelled, validation_rows):
    lines = []
    record = calibrate_after_training(model_copy, labelled, validation_rows, log=lines.append)
    search = written(model_copy)
    assert search["threshold"] == record["chosen"]["threshold"] and search["min_pairs"] == record["chosen"]["min_pairs"]
    assert search["calibration"] == json.loads(json.dumps(record))
    assert record["source"] == "labels" and record["objective"] == "top" and record["target_precision"] == 0.9
    held = record["split"]["out_of_scope"]
    assert len(held["labels"]) >= 1 and record["split"]["queries"] == len(validation_rows) == 36
    # The stored side is the rest of the corpus, without the validation rows and the held-out labels.
    assert record["split"]["stored"] == 360 - 36 - held["stored_removed"]
    top = record["chosen"]["top"]
    draws = record["split"]["out_of_scope_draws"]  # 4 seeded draws of held-out labels, pooled
    assert len(draws) == 4 and top["out_of_scope"] == sum(d["queries"] for d in draws)
    assert top["answered"] + top["out_of_scope_answered"] >= 1
    if record["target_reached"]:
        assert top["precision"] >= 0.9
        # At least 80% of the held-out intents' questions unanswered (by the lower bound), or the
        # record says the floor could not be kept beside the precision.
        assert record["min_out_of_scope_no_match"] == 0.8
        if record.get("no_match_reached") is False:
            assert "out-of-scope questions unanswered" in record["note"]
        else:
            assert top["out_of_scope_no_match"] >= 0.8
    else:  # a weak model: the most net right answers instead, and the record says why
        assert "no threshold reaches precision 0.9" in record["note"] and top["net"] > 0
    assert QuestionEncoder.load(model_copy).default_threshold == search["threshold"]
    assert lines and lines[-1].startswith("calibrated on labels")


def test_after_training_with_a_pairs_file_and_no_labels(model_copy, tiny_corpus_rows, labelled, validation_rows):
    unlabelled = Corpus(list(labelled.texts), sha256=labelled.sha256, path="u.csv", text_column="text")
    # Every sixth question paired with the next one (same intent: a duplicate) and with one 60 rows on.
    left, right, duplicate = [], [], []
    for i in range(0, len(tiny_corpus_rows), 6):
        a, b, other = tiny_corpus_rows[i], tiny_corpus_rows[i + 1], tiny_corpus_rows[(i + 60) % len(tiny_corpus_rows)]
        left += [a["text"], a["text"]]
        right += [b["text"], other["text"]]
        duplicate += [True, a["category"] == other["category"]]
    pairs = PairsCorpus(left, right, duplicate, path="p.csv")
    lines = []
    record = calibrate_after_training(model_copy, unlabelled, validation_rows, pairs=pairs, target_precision=0.2,
                                      log=lines.append)
    assert record["source"] == "pairs" and record["data"]["kind"] == "pairs"
    assert record["split"]["top_answers"]["queries"] == len(set(left))
    assert written(model_copy)["threshold"] == record["chosen"]["threshold"]


def test_teacher_pseudo_pairs_rule_on_hand_made_vectors():
    stored = np.array([[1.0, 0.0], [0.9, 0.436], [0.0, 1.0]])  # cosines with [1, 0]: 1, 0.9, 0
    queries = np.array([[2.0, 0.0], [-1.0, 0.0]])
    judge, in_scope = teacher_judge(queries, stored, cutoff=0.8, neighbours=1)
    duplicate, right, usable = judge(slice(0, 2))
    assert duplicate.tolist() == [[True, True, False], [False, False, False]]
    assert right.tolist() == [[True, False, False], [False, False, False]]  # only the nearest neighbour
    assert in_scope.tolist() == [True, False] and usable is None


def test_after_training_with_teacher_vectors(model_copy, labelled, validation_rows):
    # A teacher that knows the intents: one direction per intent, a little noise.
    intents = sorted(set(labelled.labels))
    rng = np.random.default_rng(0)
    teacher = np.eye(len(intents))[[intents.index(label) for label in labelled.labels]]
    teacher = np.hstack([teacher, 0.05 * rng.normal(size=(len(teacher), 4))]).astype(np.float32)
    # One intent is unknown to the stored side for the teacher: its vectors point elsewhere.
    unknown = [i for i in validation_rows if labelled.labels[i] == intents[0]]
    teacher[unknown] = np.hstack([np.zeros(len(intents)), [1.0, 0, 0, 0]])
    unlabelled = Corpus(list(labelled.texts), sha256=labelled.sha256, path="u.csv", text_column="text")
    record = calibrate_after_training(model_copy, unlabelled, validation_rows, teacher=teacher, log=lambda _: None)
    assert record["source"] == "teacher" and "teacher cosine >= 0.8" in record["rule"]
    assert record["validation_with_duplicate"] > 0.5 and "scope_note" not in record
    top = record["chosen"]["top"]
    assert top["out_of_scope"] == len(unknown) >= 1 and top["queries"] == 36 - len(unknown)
    if record["target_reached"]:
        assert top["precision"] >= 0.9
    else:
        assert "no threshold reaches precision 0.9" in record["note"]
    with pytest.raises(CalibrationError, match="teacher embeddings must be"):
        calibrate_after_training(model_copy, unlabelled, validation_rows, teacher=teacher[:10], log=lambda _: None)


def test_after_training_says_so_when_few_questions_have_a_teacher_duplicate(model_copy, labelled, validation_rows):
    # The teacher knows the intents but puts a question and its intent's others at cosine ~0.64 (as
    # it does SNIPS's requests): at the 0.8 cutoff almost no question has a duplicate.
    intents = sorted(set(labelled.labels))
    rng = np.random.default_rng(1)
    own = np.eye(len(intents))[[intents.index(label) for label in labelled.labels]]
    noise = rng.normal(size=(len(own), 64))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    teacher = np.hstack([0.8 * own, 0.6 * noise]).astype(np.float32)
    unlabelled = Corpus(list(labelled.texts), sha256=labelled.sha256, path="u.csv", text_column="text")
    lines = []
    record = calibrate_after_training(model_copy, unlabelled, validation_rows, teacher=teacher, log=lines.append)
    assert record["validation_with_duplicate"] < 0.5
    assert "--label-column" in record["scope_note"] and "--feedback" in record["scope_note"]
    assert any(line.startswith("calibration: only") for line in lines)
    assert written(model_copy)["calibration"]["scope_note"] == record["scope_note"]


def test_copies_of_a_question_never_straddle_the_validation_split():
    # A desk log repeats questions: a validation question whose copy is stored matches it exactly,
    # and the calibration then believes its rule answers rightly.
    texts = [f"question {i % 40}" for i in range(200)] + [f"Question  {i}!" for i in range(40)]
    train, validation = split_train_validation(len(texts), 0.2, 7, texts)
    copies = lambda rows: {normalize(texts[i]) for i in rows}  # noqa: E731
    assert copies(train).isdisjoint(copies(validation)) and len(validation) > 0
    assert sorted([*train, *validation]) == list(range(len(texts)))
    assert len(validation) == 48  # the fraction, whole questions only
    # A desk log where a few questions are asked very often: they stay with the training rows.
    log = [f"question {min(i, 30)}" for i in range(1000)]  # "question 30" asked 970 times
    train, validation = split_train_validation(len(log), 0.1, 7, log)
    assert len(validation) == 30 and all(log[i] != "question 30" for i in validation)
    distinct = [f"question {i}" for i in range(50)]  # no repeats: the split is the row split
    assert all((a == b).all() for a, b in zip(split_train_validation(50, 0.2, 7, distinct),
                                              split_train_validation(50, 0.2, 7), strict=True))


def test_a_model_trained_before_copies_were_kept_together_is_judged_on_its_own_validation_rows(labelled):
    from app.evaluation.calibrate import holdout_split

    texts = list(labelled.texts[:150]) * 2  # every question twice
    corpus = Corpus(texts, list(labelled.labels[:150]) * 2, sha256="s", path="d.csv", text_column="text",
                    label_column="category")
    config = {"data": {"sha256": "s"}, "seed": 7, "settings": {"training": {"val_fraction": 0.1}}}
    old = holdout_split(corpus, config, 0.1, seed=0, max_queries=None)
    assert list(old[1]) == list(split_train_validation(300, 0.1, 7)[1])  # the row split it trained with
    config["data"]["validation_split"] = "copies together"
    new = holdout_split(corpus, config, 0.1, seed=0, max_queries=None)
    assert list(new[1]) == list(split_train_validation(300, 0.1, 7, texts)[1])


def test_rows_without_a_label_are_unlabelled_not_a_category_of_their_own(tmp_path):
    path = tmp_path / "desk.csv"
    path.write_text("text,category\nwhere is my card,card\nrefund please,\nstill no refund, \nlost my card,card\n")
    assert read_corpus(path, "text", "category").labels == ["card", None, None, "card"]
    jsonl = tmp_path / "desk.jsonl"
    jsonl.write_text('{"q": "where is my card", "c": "card"}\n{"q": "refund please", "c": null}\n')
    assert read_corpus(jsonl, "q", "c").labels == ["card", None]


def test_a_text_cell_that_is_not_text_or_only_invisible_names_its_row(tmp_path):
    from app.model.data import CorpusError

    zero_width = tmp_path / "zw.csv"
    zero_width.write_text("text\nwhere is my card\n\u200b\u200b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"row 3 has an empty 'text' \(only invisible characters\)"):
        read_corpus(zero_width, "text")
    number = tmp_path / "n.jsonl"
    number.write_text('{"q": "where is my card"}\n{"q": 42}\n')
    with pytest.raises(CorpusError, match="row 2: 'q' must be text, got 42"):
        read_corpus(number, "q")


def test_a_csv_row_with_more_fields_than_the_header_is_refused_not_cut_at_a_comma(tmp_path):
    from app.model.data import CorpusError

    path = tmp_path / "desk.csv"
    path.write_text("text,category\nwhere is my card,card\nmy card, it was sent last week,card\n")
    with pytest.raises(CorpusError, match=r"row 3 has 3 fields, the header 2: a comma inside an unquoted text"):
        read_corpus(path, "text", "category")
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("text,category\nwhere is my card,card,\nrefund please,refund,,\n")  # empty extras: harmless
    assert read_corpus(trailing, "text", "category").texts == ["where is my card", "refund please"]


def test_a_held_out_split_keeps_unlabelled_rows_on_the_stored_side(labelled):
    from app.evaluation.calibrate import holdout_split

    labels = [None if i % 2 else label for i, label in enumerate(labelled.labels)]
    partly = Corpus(list(labelled.texts), labels, sha256="other", path="p.csv", text_column="text", label_column="c")
    stored, queries, split = holdout_split(partly, {}, 0.3, seed=0, max_queries=None)
    assert all(labels[i] is not None for i in queries) and len(queries) > 0
    assert sorted([*stored, *queries]) == list(range(len(labels)))
    assert split["unlabelled_moved_to_stored"] > 0


def test_after_training_judges_only_labelled_rows_and_needs_two_labels(model_copy, labelled, validation_rows):
    # A third of the labels missing: they must not form a category ("" or "None") whose questions
    # all count as right answers to each other.
    labels = [None if i % 3 == 0 else label for i, label in enumerate(labelled.labels)]
    partly = Corpus(list(labelled.texts), labels, sha256=labelled.sha256, path="p.csv", text_column="text",
                    label_column="category")
    record = calibrate_after_training(model_copy, partly, validation_rows, log=lambda _: None)
    judged = [i for i in validation_rows if labels[i] is not None]
    assert record["source"] == "labels"
    assert record["split"]["unlabelled_moved_to_stored"] == len(validation_rows) - len(judged)
    assert record["split"]["queries"] == len(judged)
    # One label only: "same label = right" would call every answer right; another truth is used.
    one = Corpus(list(labelled.texts), ["card"] * len(labelled), sha256=labelled.sha256, path="o.csv",
                 text_column="text", label_column="category")
    lines = []
    record = calibrate_after_training(model_copy, one, validation_rows, log=lines.append)
    assert record["source"] != "labels" and any("1 distinct label" in line for line in lines)


def test_after_training_with_nothing_falls_back_to_self_augmented_copies(model_copy, labelled, validation_rows):
    unlabelled = Corpus(list(labelled.texts), sha256=labelled.sha256, path="u.csv", text_column="text")
    record = calibrate_after_training(model_copy, unlabelled, validation_rows, log=lambda _: None)
    assert record["source"] == "self-augmentation" and record["target_reached"] is None
    assert "surface-form" in record["rule"] and record["fallback"]["quantile"] == FALLBACK_QUANTILE
    top = record["chosen"]["top"]
    # At t, FALLBACK_QUANTILE of the copies match their original, so at least as many are answered.
    assert top["answered_share"] >= FALLBACK_QUANTILE and top["queries"] == 36
    assert written(model_copy)["threshold"] == record["chosen"]["threshold"] > 0


def test_when_no_threshold_answers_more_rightly_than_wrongly_the_rule_answers_only_exact_repeats(
    model_copy, labelled, validation_rows
):
    # Labels that say nothing of the texts (shuffled): every threshold answers wrongly at least as
    # often as rightly, and "the most net right answers" stored a rule that answered only wrongly.
    shuffled = list(np.random.default_rng(3).permutation(labelled.labels))
    noise = Corpus(list(labelled.texts), shuffled, sha256=labelled.sha256, path="n.csv", text_column="text",
                   label_column="category")
    lines = []
    record = calibrate_after_training(model_copy, noise, validation_rows, log=lines.append)
    assert record["source"] == "labels" and record["target_reached"] is False
    assert record["chosen"]["threshold"] == 1e-9 and record["chosen"]["top"]["net"] >= 0
    encoder = QuestionEncoder.load(model_copy)
    assert record["chosen"]["min_pairs"] <= encoder.samples_per_question  # an exact repeat still matches
    assert "only questions that repeat a stored question's text" in record["note"]
    assert any("only questions that repeat" in line for line in lines)
    assert written(model_copy)["threshold"] == 1e-9


def test_bad_validation_rows_are_an_error(model_copy, labelled):
    with pytest.raises(CalibrationError, match="validation rows"):
        calibrate_after_training(model_copy, labelled, np.array([], dtype=np.int64), log=lambda _: None)
    with pytest.raises(CalibrationError, match="nothing is left to store"):
        calibrate_after_training(model_copy, labelled, np.arange(len(labelled)), log=lambda _: None)


def test_self_augmented_copies_differ_by_one_small_edit():
    rng = np.random.default_rng(0)
    long = self_augmented("where is my new card please", rng)
    assert len(long.split()) == 5 and set(long.split()) < set(["where", "is", "my", "new", "card", "please"])
    assert self_augmented("card arrived", rng) == "arrived card"
    assert self_augmented("card?", rng) == "card" and self_augmented("card", rng) == "card?"
