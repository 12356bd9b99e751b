"""`qsim train` as a desk runs it: the defaults are the recipe, and the model comes out calibrated."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.model.config import ModelSettings
from tests.conftest import tiny_architecture, write_corpus


def tiny_config(tmp_path, epochs: int):
    """A --config file of the tiny test architecture, trained for `epochs`."""
    config = tmp_path / "tiny.json"
    tiny = tiny_architecture()
    tiny["training"]["epochs"] = epochs
    config.write_text(json.dumps(tiny))
    return config


def test_a_freshly_trained_model_is_calibrated_on_its_validation_rows(tiny_corpus_file, tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=2)
    out = tmp_path / "desk-model"
    code = main(["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--label-column", "category",
                 "--config", str(config), "--out", str(out), "--no-progress", "--teacher", "none"])
    assert code == 0
    search = json.loads((out / "config.json").read_text())["settings"]["search"]
    assert search["calibration"]["source"] == "labels"
    assert search["calibration"]["objective"] == "top"
    assert search["threshold"] != ModelSettings().search.threshold
    assert "calibrated on labels" in capsys.readouterr().out


def test_a_model_trained_with_pairs_is_calibrated_on_the_pairs_it_did_not_learn_from(tiny_corpus_rows, tmp_path):
    import csv

    corpus = write_corpus(tmp_path / "unlabelled.csv", tiny_corpus_rows, columns=("text",))
    pairs = tmp_path / "pairs.csv"
    texts = [row["text"] for row in tiny_corpus_rows]
    with pairs.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["first", "second", "duplicate"])
        for i, row in enumerate(tiny_corpus_rows[:-1]):
            following = tiny_corpus_rows[i + 1]
            writer.writerow([texts[i], texts[i + 1], int(row["category"] == following["category"])])
    out = tmp_path / "paired"
    assert main(["train", "--corpus", str(corpus), "--text-column", "text", "--pairs", str(pairs), "--config",
                 str(tiny_config(tmp_path, epochs=1)), "--out", str(out), "--no-progress", "--teacher", "none",
                 "--target-precision", "0.1"]) == 0
    calibration = json.loads((out / "config.json").read_text())["settings"]["search"]["calibration"]
    assert calibration["source"] == "pairs" and "held out" in calibration["split"]["method"]
    assert 0 < calibration["split"]["pairs"] < len(texts) - 1


def test_no_calibrate_leaves_the_uncalibrated_defaults(tiny_corpus_file, tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    out = tmp_path / "raw"
    assert main(["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--config", str(config),
                 "--out", str(out), "--no-progress", "--no-calibrate"]) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["search"]["calibration"] is None


def test_a_bad_target_precision_is_one_line(tiny_corpus_file, tmp_path, capsys):
    code = main(["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(tmp_path / "m"),
                 "--target-precision", "1.5"])
    assert code == 2
    assert "--target-precision must be in (0, 1]" in capsys.readouterr().err


def test_the_cli_defaults_are_the_recipe():
    """The recipe measured in models/README.md, as `qsim train` gets it with no --config."""
    settings = ModelSettings()
    arch, training = settings.architecture, settings.training
    assert (arch.encoder, arch.latent, arch.bag_features) == ("bilstm", "vmf", True)
    assert training.teacher == "minilm" and training.embedding_init == "teacher"
    assert training.teacher_regression_weight > 0 and training.teacher_weight > 0 and training.augment > 0
    assert settings.tokenizer.vocab_size == 8000
    assert (training.transfer_pool, training.transfer_per_epoch) == (10000, 5000)  # the bundled set, within 10 minutes


def test_the_shipped_defaults_differences_are_written_down():
    from app.model.artifact import load_artifact
    from app.model.config import load_settings_file
    from tests.conftest import ROOT

    shipped = load_artifact(ROOT / "models" / "default").settings.training
    recipe = load_settings_file(ROOT / "models" / "default.train.json").training  # what make train-default passes
    assert (shipped.epochs, shipped.transfer_pool, shipped.transfer_per_epoch) == (
        recipe.epochs, recipe.transfer_pool, recipe.transfer_per_epoch
    ) == (16, 0, 10000)


def test_qsim_train_distils_on_the_bundled_transfer_set_unless_told_otherwise(monkeypatch, tmp_path):
    import argparse

    from app.model import cli
    from app.model.data import bundled_transfer_file

    monkeypatch.setattr("app.model.teacher.minilm_available", lambda: True)
    bundled = bundled_transfer_file()
    assert bundled is not None and bundled.name == "transfer.txt"  # shipped with the repository

    def files(teacher="minilm", **given) -> list:
        args = argparse.Namespace(**{"no_transfer": False, "transfer": None, "init": None, **given})
        return cli._transfer_files(args, teacher)

    assert files() == [bundled]
    assert files(transfer=[tmp_path / "mine.txt"]) == [tmp_path / "mine.txt"]
    assert files(no_transfer=True) == []
    assert files(init=tmp_path / "models" / "default") == []  # it learned from the transfer set already
    assert files(teacher="none") == []  # without the teacher the transfer set only costs time
    monkeypatch.setattr("app.model.teacher.minilm_available", lambda: False)
    assert files() == []


def test_init_refuses_an_architecture_it_would_silently_ignore(tiny_corpus_file, tiny_model_dir, tmp_path, capsys):
    base = ["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(tmp_path / "m"),
            "--init", str(tiny_model_dir), "--no-progress"]
    assert main([*base, "--encoder", "gru", "--latent", "gaussian"]) == 2
    error = capsys.readouterr().err
    assert "--encoder, --latent cannot change them" in error and error.count("\n") == 1
    config = tmp_path / "arch.json"
    config.write_text(json.dumps({"architecture": {"encoder_hidden": 64}, "training": {"epochs": 1}}))
    assert main([*base, "--config", str(config)]) == 2
    assert "'architecture'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_trained_out_directory_is_replaced_only_when_asked(tiny_corpus_file, tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=1)
    out = tmp_path / "desk-model"
    run = ["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--config", str(config),
           "--out", str(out), "--no-progress", "--no-calibrate", "--teacher", "none"]
    assert main(run) == 0
    first = (out / "config.json").read_text()
    capsys.readouterr()
    assert main([*run, "--seed", "4"]) == 2
    assert "holds a trained model: pass --overwrite" in capsys.readouterr().err
    assert (out / "config.json").read_text() == first  # untouched
    assert main([*run, "--seed", "4", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 4
    assert json.loads((out / "metrics.json").read_text())["epochs"]  # the new run's
    (tmp_path / "a-file").write_text("x")
    assert main([*run[:-6], "--out", str(tmp_path / "a-file"), "--no-progress"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_invisible_only_text_in_pairs_is_refused_by_row_before_overwrite_removes_anything(
    tiny_corpus_file, tiny_model_dir, tmp_path, capsys
):
    import shutil

    from app.model.data import read_lines

    out = shutil.copytree(tiny_model_dir, tmp_path / "desk-model")
    before = sorted(p.name for p in out.iterdir())
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("first,second,duplicate\nwhere is my card,has my card shipped,1\nwhere is my card,\u200b\u200d,0\n")
    run = ["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(out), "--overwrite",
           "--no-progress", "--no-calibrate", "--teacher", "none", "--pairs", str(pairs)]
    assert main(run) == 2
    error = capsys.readouterr().err
    assert f"{pairs}: row 3 has an empty 'second' (only invisible characters)" in error and error.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("what is this\n\u200b\nhow are you\n")
    assert read_lines(transfer) == ["what is this", "how are you"]  # skipped like a blank line


def test_a_min_pairs_above_k_squared_is_refused_by_train_and_by_load(tiny_corpus_file, tiny_model_dir, tmp_path, capsys):
    import shutil

    from app.model.artifact import ArtifactError, load_artifact

    config = tmp_path / "mp.json"
    config.write_text(json.dumps({"search": {"min_pairs": 100, "threshold": 0.3}}))
    assert main(["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(tmp_path / "m"),
                 "--config", str(config), "--no-progress", "--no-calibrate", "--teacher", "none"]) == 2
    error = capsys.readouterr().err
    assert "search.min_pairs 100 is more than the 25 pairs" in error and error.count("\n") == 1
    assert not (tmp_path / "m").exists()
    edited = shutil.copytree(tiny_model_dir, tmp_path / "edited")
    record = json.loads((edited / "config.json").read_text())
    record["settings"]["search"]["min_pairs"] = 26
    (edited / "config.json").write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="min_pairs 26 is more than the 25 pairs"):
        load_artifact(edited)


def test_a_diverging_run_says_so_in_one_line(tiny_corpus_file, tmp_path, capsys):
    config = tmp_path / "hot.json"
    tiny = tiny_architecture()
    tiny["training"] |= {"epochs": 1, "learning_rate": 1e6}
    config.write_text(json.dumps(tiny))
    assert main(["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(tmp_path / "m"),
                 "--config", str(config), "--no-progress", "--no-calibrate", "--teacher", "none"]) == 2
    error = capsys.readouterr().err
    assert "training diverged" in error and "learning_rate 1e+06 is probably too high" in error, error
    assert error.count("\n") == 1


def test_an_overwrite_that_fails_puts_the_old_model_back(tiny_corpus_file, tiny_model_dir, tmp_path, capsys):
    import shutil

    out = shutil.copytree(tiny_model_dir, tmp_path / "desk-model")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    hot = tiny_architecture()
    hot["training"] |= {"epochs": 1, "learning_rate": 1e6}  # diverges during training, after the set-aside
    config = tmp_path / "hot.json"
    config.write_text(json.dumps(hot))
    run = ["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(out), "--overwrite",
           "--no-progress", "--no-calibrate", "--teacher", "none"]
    assert main([*run, "--config", str(config)]) == 2
    assert "training diverged" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / ".previous").exists()
    assert main([*run, "--config", str(tiny_config(tmp_path, epochs=1))]) == 0  # a run that succeeds replaces it
    assert (out / "config.json").read_bytes() != before["config.json"] and not (out / ".previous").exists()


def test_a_one_question_corpus_is_refused_in_one_line(tmp_path, capsys):
    corpus = tmp_path / "one.csv"
    corpus.write_text("text\nwhere is my card\n")
    assert main(["train", "--corpus", str(corpus), "--text-column", "text", "--out", str(tmp_path / "m"),
                 "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "needs at least 2 questions" in error and error.count("\n") == 1


def test_overwrite_removes_nothing_until_every_check_passed_and_resume_needs_a_state(
    tiny_corpus_file, tiny_model_dir, tmp_path, capsys
):
    import shutil

    out = shutil.copytree(tiny_model_dir, tmp_path / "desk-model")
    (out / "train_state.pt").unlink(missing_ok=True)
    before = sorted(p.name for p in out.iterdir())
    run = ["train", "--text-column", "text", "--out", str(out), "--no-progress", "--no-calibrate", "--teacher", "none",
           "--config", str(tiny_config(tmp_path, epochs=1))]
    assert main([*run, "--corpus", str(tmp_path / "missing.csv"), "--overwrite"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before  # the mistyped corpus deleted nothing
    assert main([*run, "--corpus", str(tiny_corpus_file), "--resume"]) == 2
    assert "no train_state.pt to resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # fine-tuning a model in its own directory: it is read before its files are replaced
    init_run = ["train", "--text-column", "text", "--out", str(out), "--no-progress", "--no-calibrate",
                "--teacher", "none", "--epochs", "1", "--corpus", str(tiny_corpus_file), "--init", str(out), "--overwrite"]
    assert main(init_run) == 0
    assert json.loads((out / "config.json").read_text())["data"]["init"]


def test_an_overwrite_whose_calibration_fails_keeps_the_new_model(tiny_corpus_file, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from app.evaluation import calibrate

    out = shutil.copytree(tiny_model_dir, tmp_path / "desk-model")
    old_weights = (out / "model.pt").read_bytes()

    def failing(*args, **kwargs):
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(calibrate, "calibrate_after_training", failing)
    run = ["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--out", str(out), "--overwrite",
           "--no-progress", "--teacher", "none", "--config", str(tiny_config(tmp_path, epochs=1)), "--seed", "5"]
    assert main(run) == 2
    assert "calibration failed" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() != old_weights and json.loads((out / "config.json").read_text())["seed"] == 5
    assert not (out / ".previous").exists()


def test_init_keeps_the_start_models_sampling_unless_the_config_sets_one(tiny_corpus_file, tmp_path):
    start_config = tmp_path / "start.json"
    settings = tiny_architecture()
    settings["training"]["epochs"] = 1
    settings["sampling"] = {"temperature": 0.4, "precision": "float64"}
    start_config.write_text(json.dumps(settings))
    start, tuned, chosen = tmp_path / "start", tmp_path / "tuned", tmp_path / "chosen"
    common = ["--corpus", str(tiny_corpus_file), "--text-column", "text", "--no-progress", "--no-calibrate",
              "--teacher", "none"]
    assert main(["train", *common, "--config", str(start_config), "--out", str(start)]) == 0
    assert main(["train", *common, "--init", str(start), "--epochs", "1", "--out", str(tuned)]) == 0
    sampling = json.loads((tuned / "config.json").read_text())["settings"]["sampling"]
    assert (sampling["temperature"], sampling["precision"]) == (0.4, "float64")
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"training": {"epochs": 1}, "sampling": {"temperature": 0.3}}))
    assert main(["train", *common, "--init", str(start), "--config", str(own), "--out", str(chosen)]) == 0
    assert json.loads((chosen / "config.json").read_text())["settings"]["sampling"]["temperature"] == 0.3


def test_pairs_all_used_for_training_leave_the_calibration_to_the_next_source(tiny_corpus_file, tmp_path, monkeypatch,
                                                                             capsys):
    from app.model.train import Trainer

    monkeypatch.setattr(Trainer, "_held_out_pair_flags", lambda self: [False] * len(self.pairs))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("first,second,duplicate\nwhere is my new card,has my card been sent,1\n")
    out = tmp_path / "m"
    assert main(["train", "--corpus", str(tiny_corpus_file), "--text-column", "text", "--pairs", str(pairs),
                 "--config", str(tiny_config(tmp_path, epochs=1)), "--out", str(out), "--no-progress",
                 "--teacher", "none"]) == 0
    assert "held none of" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["settings"]["search"]["calibration"]["source"] != "pairs"
