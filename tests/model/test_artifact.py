"""Artifact save/load round trip, and refusal of broken or mixed-up artifacts."""

import json
import shutil

import numpy as np
import pytest

from app.model.artifact import ArtifactError, load_artifact, update_search_defaults
from app.model.config import SearchDefaults
from app.model.encoder import QuestionEncoder


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_artifact_holds_every_documented_file(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.pt", "tokenizer.model", "metrics.json", "MODEL_CARD.md"} <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["data"]["sha256"] and config["data"]["rows"] == 360
    assert config["qsim_version"] and config["settings"]["architecture"]["encoder"] == "bilstm"
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    assert {"val_reconstruction", "val_kl", "active_units", "wall_seconds"} <= set(metrics["epochs"][0])


def test_round_trip_reproduces_the_codes(model_copy, tiny_encoder):
    reloaded = QuestionEncoder.load(model_copy)
    assert reloaded.model_id == tiny_encoder.model_id
    texts = ["card not arrived", "exchange rate"]
    assert np.array_equal(reloaded.sample(texts), tiny_encoder.sample(texts))


@pytest.mark.parametrize("name", ["config.json", "model.pt", "tokenizer.model"])
def test_missing_file_is_named(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ArtifactError, match=f"missing {name}"):
        load_artifact(model_copy)


def test_changed_weights_are_refused(model_copy):
    data = bytearray((model_copy / "model.pt").read_bytes())
    data[-100] ^= 0xFF
    (model_copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.pt does not match the checksum"):
        load_artifact(model_copy)


def test_tokenizer_from_another_model_is_refused(model_copy, tmp_path, tiny_corpus_rows):
    from app.model.tokenizer import Tokenizer

    Tokenizer.train([r["text"] for r in tiny_corpus_rows[:50]], vocab_size=60).save(model_copy / "tokenizer.model")
    with pytest.raises(ArtifactError, match="tokenizer.model does not match"):
        load_artifact(model_copy)


def test_invalid_config_is_named(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="config.json is not valid JSON"):
        load_artifact(model_copy)


def test_architecture_that_does_not_fit_the_weights_is_refused(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["settings"]["architecture"]["latent_dim"] = 12
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="model.pt does not fit the architecture"):
        load_artifact(model_copy)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


def test_calibrated_defaults_are_stored_without_changing_the_model_identity(model_copy, tiny_encoder):
    update_search_defaults(model_copy, SearchDefaults(threshold=1.5, min_pairs=3))
    reloaded = QuestionEncoder.load(model_copy)
    assert (reloaded.default_threshold, reloaded.default_min_pairs) == (1.5, 3)
    assert reloaded.model_id == tiny_encoder.model_id
