"""Shared fixtures: a small labelled corpus and one tiny model trained once per test session."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

os.environ.setdefault("QSIM_ENV", "test")

pytest_plugins = ["tests.service_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
BANKING77_TRAIN = ROOT / "data" / "banking77" / "train.csv"
TINY_INTENTS = 12
TINY_PER_INTENT = 30


def tiny_architecture() -> dict:
    return {
        "tokenizer": {"vocab_size": 300, "max_tokens": 32},
        "architecture": {
            "latent": "gaussian",
            "bag_features": False,  # random tiny embeddings: the bag path only blurs a model this small
            "embedding_dim": 32,
            "encoder_hidden": 32,
            "feature_size": 32,
            "latent_dim": 16,
            "decoder_hidden": 48,
            "dropout": 0.1,
        },
        # Enough steps, word dropout and free bits for the tiny latent to come alive (all units active).
        "training": {
            "epochs": 8, "batch_size": 16, "kl_warmup_epochs": 3.0, "patience": 3, "beta": 0.5,
            "learning_rate": 0.003, "word_dropout": 0.6, "free_bits": 0.2,
            # The shared fixture stays teacher-free (fast, and the same with or without qsim[teacher]);
            # the distillation tests train their own tiny models with the teacher.
            "teacher": "none", "label_weight": 1.0, "augment": 0.0,
        },
        "sampling": {"temperature": 1.0},
    }


@pytest.fixture(scope="session")
def tiny_corpus_rows() -> list[dict]:
    """The first TINY_PER_INTENT questions of each of TINY_INTENTS BANKING77 intents."""
    per_intent: dict[str, list[dict]] = {}
    with BANKING77_TRAIN.open(newline="") as handle:
        for row in csv.DictReader(handle):
            bucket = per_intent.setdefault(row["category"], [])
            if len(bucket) < TINY_PER_INTENT:
                bucket.append(row)
    intents = sorted(per_intent)[:TINY_INTENTS]
    return [row for intent in intents for row in per_intent[intent]]


def write_corpus(path: Path, rows, columns=("text", "category")) -> Path:
    """A corpus CSV of `rows` (dicts) with the given columns only."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_corpus_file(tiny_corpus_rows, tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "tiny.csv", tiny_corpus_rows)


def require_milvus() -> None:
    """Skips the calling test (or, called at module level, the module) unless the milvus extra is
    installed: pymilvus, and embedded milvus-lite, which the tests run on."""
    pytest.importorskip("pymilvus", reason="the Milvus backend's tests need the milvus extra (pip install 'qsim[milvus]')")
    pytest.importorskip("milvus_lite", reason="the Milvus backend's tests need milvus-lite (pip install 'qsim[milvus]')")


@pytest.fixture(scope="session")
def tiny_settings():
    from app.model.config import ModelSettings

    return ModelSettings.model_validate(tiny_architecture())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_corpus_file, tiny_settings, tmp_path_factory) -> Path:
    """A tiny model trained in seconds on the tiny corpus; shared (read-only) by the whole session."""
    from app.model.data import read_corpus
    from app.model.train import Trainer

    out = tmp_path_factory.mktemp("models") / "tiny"
    corpus = read_corpus(tiny_corpus_file, "text", "category")
    Trainer(corpus, out, tiny_settings, seed=7, progress=False, log=lambda _: None).run()
    return out


@pytest.fixture(scope="session")
def other_tiny_model_dir(tiny_model_dir, tiny_corpus_file, tiny_settings) -> Path:
    """A second tiny model beside the first (another seed, so another model id and other codes),
    for switching models."""
    from app.model.data import read_corpus
    from app.model.train import Trainer

    out = tiny_model_dir.parent / "tiny-other"
    corpus = read_corpus(tiny_corpus_file, "text", "category")
    Trainer(corpus, out, tiny_settings, seed=8, progress=False, log=lambda _: None).run()
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    from app.model.encoder import QuestionEncoder

    return QuestionEncoder.load(tiny_model_dir)
