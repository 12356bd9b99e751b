"""`Trainer`: determinism, resume, KL annealing, collapse detection, early stopping."""

import json

import numpy as np
import pytest
import torch

from app.model.config import ModelSettings, TrainingConfig
from app.model.data import read_corpus
from app.model.train import CollapseWarning, Trainer, beta_at, count_active_units, learning_rate_at


def quiet(_):
    pass


def train(corpus_file, out, settings, seed=3, transfer=None, **kwargs):
    corpus = read_corpus(corpus_file, "text", "category")
    return Trainer(corpus, out, settings, seed=seed, progress=False, log=quiet, transfer=transfer).run(**kwargs)


def settings_with(tiny_settings, **training) -> ModelSettings:
    settings = tiny_settings.model_copy(deep=True)
    for key, value in training.items():
        setattr(settings.training, key, value)
    return settings


def last_state(out):
    return torch.load(out / "train_state.pt", weights_only=True)["model"]


def test_same_seed_same_model(tiny_corpus_file, tiny_settings, tmp_path):
    settings = settings_with(tiny_settings, epochs=2)
    train(tiny_corpus_file, tmp_path / "a", settings)
    train(tiny_corpus_file, tmp_path / "b", settings)
    config_a = json.loads((tmp_path / "a" / "config.json").read_text())
    config_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config_a["model_id"] == config_b["model_id"]
    train(tiny_corpus_file, tmp_path / "c", settings, seed=4)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model_id"] != config_a["model_id"]


def test_resumed_training_ends_where_uninterrupted_training_ends(tiny_corpus_file, tiny_settings, tmp_path):
    full = train(tiny_corpus_file, tmp_path / "full", settings_with(tiny_settings, epochs=3))
    train(tiny_corpus_file, tmp_path / "split", settings_with(tiny_settings, epochs=2))
    resumed = train(tiny_corpus_file, tmp_path / "split", settings_with(tiny_settings, epochs=3), resume=True)
    assert [m.val_loss for m in resumed.epochs] == [m.val_loss for m in full.epochs]
    for name, tensor in last_state(tmp_path / "full").items():
        assert torch.equal(tensor, last_state(tmp_path / "split")[name]), name


def test_resume_refuses_other_data(tiny_corpus_file, tiny_settings, tmp_path):
    from app.model.artifact import ArtifactError

    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1))
    other = tmp_path / "other.csv"
    other.write_text(tiny_corpus_file.read_text() + "one more question,card_arrival\n")
    with pytest.raises(ArtifactError, match="different data"):
        train(other, tmp_path / "m", settings_with(tiny_settings, epochs=2), resume=True)


def test_resume_refuses_other_transfer_questions(tiny_corpus_file, tiny_settings, tmp_path):
    from app.model.artifact import ArtifactError

    transfer = [f"a general question number {i}" for i in range(20)]
    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1), transfer=transfer[:10])
    with pytest.raises(ArtifactError, match="other transfer questions"):
        train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=2), resume=True, transfer=transfer)
    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=2), resume=True, transfer=transfer[:10])


def test_resume_refuses_other_model_or_training_settings_but_takes_more_epochs(tiny_corpus_file, tiny_settings, tmp_path):
    from app.model.artifact import ArtifactError

    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1))
    wider = settings_with(tiny_settings, epochs=2)
    wider.architecture.encoder_hidden = 48
    with pytest.raises(ArtifactError, match=r"other settings \(architecture.encoder_hidden 32 -> 48\)"):
        train(tiny_corpus_file, tmp_path / "m", wider, resume=True)
    hotter = settings_with(tiny_settings, epochs=2, learning_rate=tiny_settings.training.learning_rate * 10)
    with pytest.raises(ArtifactError, match="training.learning_rate"):
        train(tiny_corpus_file, tmp_path / "m", hotter, resume=True)
    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=2), resume=True)
    assert torch.load(tmp_path / "m" / "train_state.pt", weights_only=True)["epoch"] == 2


def test_resume_refuses_another_text_or_label_column_of_the_same_file(tiny_corpus_file, tiny_settings, tmp_path):
    from app.model.artifact import ArtifactError

    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1))
    corpus = read_corpus(tiny_corpus_file, "text", None)  # the same file, its labels left out
    with pytest.raises(ArtifactError, match="--label-column must be the same"):
        Trainer(corpus, tmp_path / "m", settings_with(tiny_settings, epochs=2), seed=3, progress=False,
                log=quiet).run(resume=True)


def test_resume_refuses_a_state_a_later_run_left_beside_another_tokenizer(tiny_corpus_file, tiny_settings, tmp_path):
    from app.model.artifact import ArtifactError

    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1))
    state = (tmp_path / "m" / "train_state.pt").read_bytes()
    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1), seed=4)  # a new run: another tokenizer?
    (tmp_path / "m" / "train_state.pt").write_bytes(state)
    tokenizer = tmp_path / "m" / "tokenizer.model"
    tokenizer.write_bytes(tokenizer.read_bytes() + b"\0")  # stands for a tokenizer learned by the later run
    with pytest.raises(ArtifactError, match="replaced the tokenizer"):
        train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=2), resume=True)


def test_metrics_log_each_epoch_with_kl_and_active_units(tiny_model_dir, tiny_settings):
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    assert len(metrics["epochs"]) == tiny_settings.training.epochs
    assert metrics["stopped"] == "completed"
    assert metrics["epochs"][-1]["active_units"] > tiny_settings.architecture.latent_dim // 2
    for epoch in metrics["epochs"]:
        assert epoch["val_kl"] > 0
        assert 0 <= epoch["active_units"] <= tiny_settings.architecture.latent_dim
    assert metrics["epochs"][-1]["val_reconstruction"] < metrics["epochs"][0]["val_reconstruction"]


def test_collapse_is_detected_reported_and_stops_training(tiny_corpus_file, tiny_settings, tmp_path):
    settings = settings_with(
        tiny_settings, epochs=8, beta=40.0, free_bits=0.0, kl_schedule="constant",
        collapse_after_epochs=0.0, collapse_kl=0.05, patience=20, label_weight=0.0,
    )
    with pytest.warns(CollapseWarning, match="posterior collapse"):
        result = train(tiny_corpus_file, tmp_path / "collapsed", settings)
    assert result.stopped == "collapse"
    assert len(result.epochs) < 8
    assert json.loads((tmp_path / "collapsed" / "metrics.json").read_text())["stopped"] == "collapse"


def test_a_corpus_with_one_validation_row_is_not_called_collapsed(tiny_corpus_rows, tiny_settings, tmp_path):
    """One validation mean has no variance: no active units then says nothing about the latent."""
    import warnings

    from tests.conftest import write_corpus

    small = write_corpus(tmp_path / "small.csv", tiny_corpus_rows[:12])
    settings = settings_with(tiny_settings, epochs=3, collapse_after_epochs=0.0, kl_schedule="constant", patience=10)
    settings.architecture.latent = "gaussian"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        result = train(small, tmp_path / "small", settings)
    assert result.stopped == "completed" and len(result.epochs) == 3
    assert result.epochs[-1].active_units == 0 and result.epochs[-1].val_kl > settings.training.collapse_kl


def test_free_bits_keep_the_kl_away_from_zero_under_the_same_pressure(tiny_corpus_file, tiny_settings, tmp_path):
    settings = settings_with(
        tiny_settings, epochs=3, beta=40.0, free_bits=0.5, kl_schedule="constant", collapse_after_epochs=0.0,
        label_weight=0.0,
    )
    with pytest.warns(CollapseWarning):  # the free nats go to variance, not to means that vary
        result = train(tiny_corpus_file, tmp_path / "free_bits", settings)
    assert result.epochs[-1].val_kl > 1.0  # while the same pressure without free bits drives it to ~0


def test_training_stops_early_when_validation_loss_stops_improving(tiny_corpus_file, tiny_settings, tmp_path):
    settings = settings_with(tiny_settings, epochs=60, patience=1, learning_rate=0.03)
    result = train(tiny_corpus_file, tmp_path / "early", settings)
    assert result.stopped == "early_stopping"
    assert len(result.epochs) < 60
    assert result.best_epoch == min(result.epochs, key=lambda m: m.val_loss).epoch
    # Resumed, it would train epochs the run it continues never would have: refused, saying why.
    from app.model.artifact import ArtifactError

    assert torch.load(tmp_path / "early" / "train_state.pt", weights_only=True)["stopped"] == "early_stopping"
    with pytest.raises(ArtifactError, match=f"stopped early.*at epoch {len(result.epochs)}"):
        train(tiny_corpus_file, tmp_path / "early", settings_with(settings.model_copy(deep=True), epochs=80), resume=True)


def test_resume_knows_the_start_model_by_content_not_by_path(tiny_corpus_file, tiny_settings, tiny_model_dir,
                                                                        tmp_path):
    import shutil

    from app.model.artifact import load_artifact

    moved = tmp_path / "elsewhere" / "start"
    shutil.copytree(tiny_model_dir, moved)
    corpus = read_corpus(tiny_corpus_file, "text", "category")
    first = Trainer(corpus, tmp_path / "m", settings_with(tiny_settings, epochs=1), seed=3, progress=False, log=quiet,
                    init=load_artifact(tiny_model_dir))
    first.run()
    again = Trainer(corpus, tmp_path / "m", settings_with(tiny_settings, epochs=2), seed=3, progress=False, log=quiet,
                    init=load_artifact(tmp_path / "elsewhere" / ".." / "elsewhere" / "start"))
    assert len(again.run(resume=True).epochs) == 2


def test_linear_annealing_ramps_then_holds():
    cfg = TrainingConfig(kl_schedule="linear", kl_warmup_epochs=4, beta=0.5)
    assert [beta_at(e, 10, cfg) for e in (0, 1, 2, 4, 9)] == [0.0, 0.125, 0.25, 0.5, 0.5]


def test_cyclical_annealing_restarts_each_cycle():
    cfg = TrainingConfig(kl_schedule="cyclical", kl_cycles=2, kl_cycle_ratio=0.5, beta=1.0)
    assert [beta_at(e, 8, cfg) for e in (0, 1, 2, 3, 4, 5, 6)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0]


def test_the_learning_rate_is_constant_or_falls_on_a_half_cosine_to_its_floor():
    constant = TrainingConfig(learning_rate=1e-3)
    assert {learning_rate_at(e, 8, constant) for e in (0, 3.5, 8)} == {1e-3}
    cosine = TrainingConfig(learning_rate=1e-3, lr_schedule="cosine", min_learning_rate_fraction=0.1)
    rates = [learning_rate_at(e, 8, cosine) for e in (0, 2, 4, 6, 8, 9)]
    assert rates[0] == pytest.approx(1e-3) and rates[2] == pytest.approx(0.55e-3)
    assert rates[4] == pytest.approx(1e-4) and rates[5] == pytest.approx(1e-4)  # a resumed run past its end holds
    assert rates == sorted(rates, reverse=True)


def test_training_follows_the_learning_rate_schedule_and_records_it(tiny_corpus_file, tiny_settings, tmp_path):
    cosine = settings_with(tiny_settings, epochs=3, patience=10, lr_schedule="cosine", min_learning_rate_fraction=0.0)
    result = train(tiny_corpus_file, tmp_path / "cosine", cosine)
    rates = [m.learning_rate for m in result.epochs]
    base = cosine.training.learning_rate
    assert rates[0] < base and rates == sorted(rates, reverse=True) and rates[-1] < 0.05 * base
    recorded = json.loads((tmp_path / "cosine" / "metrics.json").read_text())
    assert [epoch["learning_rate"] for epoch in recorded["epochs"]] == rates
    constant = train(tiny_corpus_file, tmp_path / "constant", settings_with(tiny_settings, epochs=2))
    assert {m.learning_rate for m in constant.epochs} == {tiny_settings.training.learning_rate}


def test_active_units_count_dimensions_whose_means_vary():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(0, 0.01, (500, 5))], axis=1)
    assert count_active_units(means, 0.01) == 3


def test_a_state_saved_before_a_setting_existed_resumes_with_its_default(tiny_corpus_file, tiny_settings, tmp_path):
    """A state written by an older qsim lacks the settings added since (they were at their defaults)."""
    import json as json_module

    train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=1))
    path = tmp_path / "m" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    saved = json_module.loads(state["settings"])
    for key in ("lr_schedule", "min_learning_rate_fraction"):
        del saved["training"][key]
    del state["stopped"]
    torch.save(state | {"settings": json_module.dumps(saved)}, path)
    assert len(train(tiny_corpus_file, tmp_path / "m", settings_with(tiny_settings, epochs=2), resume=True).epochs) == 2
    cosine = settings_with(tiny_settings, epochs=3, lr_schedule="cosine")
    from app.model.artifact import ArtifactError

    with pytest.raises(ArtifactError, match="training.lr_schedule 'constant' -> 'cosine'"):
        train(tiny_corpus_file, tmp_path / "m", cosine, resume=True)
