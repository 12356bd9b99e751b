"""`qsim train`."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from app.cli import CommandError, command


def _train_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train the sequence VAE question encoder on a corpus and write a model artifact directory "
        "(tokenizer, weights, config.json, metrics.json, MODEL_CARD.md)."
    )
    p.add_argument("--corpus", type=Path, required=True, help="CSV file with a header, or JSON lines (.jsonl)")
    p.add_argument("--text-column", required=True, help="column (or JSON key) holding the question text")
    p.add_argument(
        "--label-column",
        help="optional column of categories/intents; recorded with the data, and used by supervised objectives",
    )
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (created if missing)")
    transfer = p.add_mutually_exclusive_group()
    transfer.add_argument(
        "--transfer", type=Path, nargs="+", metavar="FILE",
        help="unlabelled questions to distil on besides the corpus: text files, one question per line; "
        "default: the bundled general corpus data/questions/transfer.txt when the teacher is installed "
        "(none with --init: the shipped default learned from it); training.transfer_pool of them, "
        "training.transfer_per_epoch each epoch",
    )
    transfer.add_argument(
        "--no-transfer", action="store_true",
        help="train on the corpus alone (faster; measured in models/README.md: the latent then serves "
        "questions unlike the corpus's worse)",
    )
    p.add_argument(
        "--pairs", type=Path,
        help="known pairs to learn from: CSV/JSON lines with two text columns and a 0/1 duplicate label "
        "(the format qsim calibrate --pairs and qsim feedback export use)",
    )
    p.add_argument("--pair-columns", nargs=3, metavar=("FIRST", "SECOND", "LABEL"), help="the columns of --pairs")
    p.add_argument(
        "--init", type=Path, metavar="MODEL",
        help="fine-tune a trained model (e.g. models/default) on this corpus: its tokenizer, architecture and "
        "weights are the start",
    )
    p.add_argument("--teacher", choices=("none", "minilm"), help="distillation teacher (default: minilm when installed)")
    p.add_argument(
        "--teacher-cache", type=Path,
        help="directory of the teacher's embedding cache (default: ~/.cache/qsim/teacher)",
    )
    p.add_argument("--config", type=Path, help="JSON file of settings (tokenizer, architecture, training, sampling)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides the config file)")
    p.add_argument("--encoder", choices=("bilstm", "lstm", "gru", "bigru", "bow"), help="encoder (overrides config)")
    p.add_argument("--latent", choices=("gaussian", "vmf"), help="latent distribution (overrides config)")
    p.add_argument(
        "--target-precision", type=float, default=0.9,
        help="the calibration that ends training aims at this precision of answered top results (default 0.9)",
    )
    p.add_argument(
        "--no-calibrate", action="store_true",
        help="skip the calibration on the validation rows that otherwise ends training (the model then keeps "
        "uncalibrated search defaults)",
    )
    p.add_argument("--seed", type=int, default=13, help="random seed; training is deterministic per seed on CPU")
    p.add_argument("--resume", action="store_true", help="continue from train_state.pt in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model --out already holds (without it, a trained --out is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _check_out(args) -> bool:
    """--out must be a directory to create, one to resume, or (with --overwrite) one to replace: a
    new run into a trained model's directory silently replaced it, and one interrupted left a mix of
    both. -> whether the model it holds is to be removed before training (_remove_model)."""
    from app.model.artifact import CONFIG_FILE, TRAIN_STATE_FILE

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a directory")
    trained = (out / CONFIG_FILE).exists()
    if not trained or (args.resume and (out / TRAIN_STATE_FILE).exists()):
        return False
    if not args.overwrite:
        raise CommandError(
            f"--out {out} holds a trained model"
            + (f" and no {TRAIN_STATE_FILE} to resume" if args.resume else "")
            + ": pass --overwrite to replace it" + ("" if args.resume else ", or --resume to continue its training")
        )
    return True


PREVIOUS_DIR = ".previous"  # inside --out: the replaced model while its replacement trains


def _model_files() -> tuple[str, ...]:
    from app.model.artifact import (
        CARD_FILE,
        CONFIG_FILE,
        METRICS_FILE,
        TOKENIZER_FILE,
        TRAIN_STATE_FILE,
        WEIGHTS_FILE,
    )

    return (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, METRICS_FILE, CARD_FILE, TRAIN_STATE_FILE)


def _set_aside(out: Path) -> Path:
    """The old model's files move to --out/.previous before the new one is written (so the
    directory never holds a mix of two runs' files), and come back if the new run fails
    (_put_back); a run killed outright leaves them there to move back by hand."""
    previous = out / PREVIOUS_DIR
    if previous.exists():
        raise CommandError(
            f"{previous} holds a model set aside by an earlier --overwrite that did not finish: "
            "move its files back into --out (or remove it) first"
        )
    previous.mkdir()
    for name in _model_files():
        if (out / name).exists():
            (out / name).rename(previous / name)
    return previous


def _put_back(out: Path, previous: Path) -> None:
    for name in _model_files():
        (out / name).unlink(missing_ok=True)
        if (previous / name).exists():
            (previous / name).rename(out / name)
    previous.rmdir()


def _check_init_keeps_its_architecture(args, settings) -> None:
    """--init fine-tunes the model it names, tokenizer and architecture included: asking for
    another one beside it (flags, or the sections --config's file sets) is a contradiction, not
    something to drop silently."""
    asked = [f"--{name}" for name in ("encoder", "latent") if getattr(args, name)]
    asked += [f"{args.config}'s {key!r}" for key in ("tokenizer", "architecture") if key in settings.model_fields_set]
    if asked:
        raise CommandError(
            f"--init {args.init} keeps that model's tokenizer and architecture; {', '.join(asked)} cannot change them "
            "(train without --init for another architecture)"
        )


def _transfer_files(args: argparse.Namespace, teacher: str) -> list[Path]:
    """The transfer set: --transfer's files, or by default the bundled general corpus, which only
    the teacher's distillation makes worth its training time."""
    from app.model.data import bundled_transfer_file
    from app.model.teacher import minilm_available

    if args.no_transfer:
        return []
    if args.transfer:
        return list(args.transfer)
    if args.init or teacher == "none" or not minilm_available():
        return []  # --init: the model it starts from learned from it; a desk's log is the point now
    bundled = bundled_transfer_file()
    if bundled is None:
        print("note: the bundled transfer set (data/questions/transfer.txt) is not in this installation: training "
              "on the corpus alone, so the latent serves questions unlike the corpus's worse (--transfer FILE adds one)")
        return []
    return [bundled]


@command("train", "train a model artifact on a question corpus", _train_args)
def _train(args: argparse.Namespace) -> int:
    from app.model.artifact import load_artifact
    from app.model.config import load_settings_file
    from app.model.data import read_corpus, read_lines, read_pairs

    replace = _check_out(args)
    settings = load_settings_file(args.config)
    if args.init:
        _check_init_keeps_its_architecture(args, settings)
    if args.epochs is not None:
        settings.training.epochs = args.epochs
    if args.encoder:
        settings.architecture.encoder = args.encoder
    if args.latent:
        settings.architecture.latent = args.latent
    if args.teacher:
        settings.training.teacher = args.teacher
    corpus = read_corpus(args.corpus, args.text_column, args.label_column)
    if len(corpus) < 2:
        raise CommandError(f"{args.corpus}: training needs at least 2 questions (one to learn from, one to validate on)")
    transfer = [text for path in _transfer_files(args, settings.training.teacher) for text in read_lines(path)]
    pairs = read_pairs(args.pairs, tuple(args.pair_columns) if args.pair_columns else None) if args.pairs else None
    init = load_artifact(args.init) if args.init else None
    if init is not None and "sampling" not in settings.model_fields_set:
        # How codes are drawn (K, temperature, float32 or float64) is the start model's unless the
        # --config file says otherwise: a fine-tuned model keeps the rule it was calibrated for.
        from pydantic import ValidationError

        from app.model.config import validation_problems

        try:
            settings = type(settings).model_validate(settings.model_dump() | {"sampling": init.settings.sampling.model_dump()})
        except ValidationError as error:
            raise CommandError(f"--init {args.init}'s sampling with these settings: {validation_problems(error)}") from None
    if not 0 < args.target_precision <= 1:
        raise CommandError(f"--target-precision must be in (0, 1], got {args.target_precision}")
    previous = _set_aside(args.out) if replace else None  # every check passed, an --init model already loaded
    try:
        trainer = _run_training(args, corpus, settings, transfer, pairs, init)
    except BaseException:
        if previous is not None:
            _put_back(args.out, previous)
            print(f"note: the model {args.out} held before is back in place", file=sys.stderr)
        raise
    if previous is not None:  # the new model is complete: a failed calibration below keeps it
        shutil.rmtree(previous)
    if not args.no_calibrate:
        from app.evaluation.calibrate import calibrate_after_training

        teacher = trainer.teacher_vectors
        held_out = trainer.held_out_pairs
        if held_out is not None and len(held_out) == 0:
            print(f"note: training held none of {args.pairs}'s pairs out, so the calibration cannot use them")
            held_out = None
        try:
            calibrate_after_training(
                args.out,
                corpus,
                trainer.validation_rows,
                pairs=held_out,
                teacher=None if teacher is None else teacher[: len(corpus)],
                target_precision=args.target_precision,
                log=print,
            )
        except BaseException:
            print(f"note: the model in {args.out} is trained but not calibrated (it keeps the uncalibrated search "
                  f"defaults); calibrate it with `qsim calibrate --model {args.out} ...`", file=sys.stderr)
            raise
    return 0


def _run_training(args, corpus, settings, transfer, pairs, init):
    from app.model.train import Trainer

    trainer = Trainer(
        corpus,
        args.out,
        settings,
        seed=args.seed,
        command=shlex.join(["qsim", *sys.argv[1:]]),
        progress=not args.no_progress,
        log=print,
        transfer=transfer,
        pairs=pairs,
        init=init,
        teacher_cache=args.teacher_cache,
    )
    result = trainer.run(resume=args.resume)
    best = result.best
    print(
        f"best epoch {result.best_epoch}: reconstruction {best.val_reconstruction:.3f} KL {best.val_kl:.3f} "
        f"active units {best.active_units} ({result.stopped}, {result.wall_seconds:.0f} s) -> {args.out}"
    )
    return trainer
