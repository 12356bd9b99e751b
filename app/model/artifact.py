"""The model artifact directory: what `qsim train` writes and the service loads.

    config.json       architecture, tokenizer, training, sampling and search settings, data hash,
                      qsim version, and the sha256 of the two files below
    model.pt          the VAE's state dict (loaded with weights_only=True)
    tokenizer.model   the SentencePiece model
    metrics.json      per-epoch losses, KL, active units, wall time
    MODEL_CARD.md     what the model is, how it was made, how well it does
    train_state.pt    optimiser state for `qsim train --resume` (not needed to serve)

Loading checks every file and refuses, naming the file, anything missing or not matching.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError

from app import __version__
from app.model.config import ModelSettings, SearchDefaults
from app.model.tokenizer import Tokenizer
from app.model.vae import SequenceVAE

if TYPE_CHECKING:
    from app.model.data import Corpus
    from app.model.train import TrainResult

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
TOKENIZER_FILE = "tokenizer.model"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
TRAIN_STATE_FILE = "train_state.pt"
# How the trainer split its validation rows, in config.json's data: the copies of a question on one
# side (split_train_validation with texts). Artifacts without it split rows alone.
SPLIT_KEEPS_COPIES_TOGETHER = "copies together"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


class ArtifactError(ValueError):
    """A model directory that cannot be served; the message names the offending file."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _state_dict_bytes(model: torch.nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def compute_model_id(files: dict[str, str], settings: ModelSettings) -> str:
    """Identity of what the codes depend on: weights, tokenizer, architecture and sampling.
    Calibrating the search threshold does not change it."""
    architecture = settings.architecture.model_dump()
    if not architecture["bag_features"]:
        del architecture["bag_features"]  # an option added later: older models' ids stay what they were
    identity = {
        "files": files,
        "tokenizer": settings.tokenizer.model_dump(),
        "architecture": architecture,
        "sampling": settings.sampling.model_dump(),
    }
    return _sha256(json.dumps(identity, sort_keys=True).encode())[:16]


@dataclass
class Artifact:
    directory: Path
    settings: ModelSettings
    model: SequenceVAE
    tokenizer: Tokenizer
    model_id: str
    config: dict[str, Any]

    @property
    def metric(self) -> str:
        return self.model.metric

    @property
    def name(self) -> str:
        """The directory's name: the handle a reindex uses to switch to this model."""
        return self.directory.name


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"model artifact {model_dir} is missing {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON: {error}") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {config.get('format_version')!r}; this qsim reads {FORMAT_VERSION}"
        )
    return config


def _with_defaults(saved: dict) -> dict:
    """Resumable settings saved by an older qsim, with the settings added since at their defaults
    (what that run trained with); as saved when they no longer validate."""
    try:
        settings = ModelSettings.model_validate(saved).model_dump(include=set(saved), mode="json")
    except ValidationError:
        return saved
    settings.get("training", {}).pop("epochs", None)
    return settings


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"training": {"learning_rate": 1e-3}} -> {"training.learning_rate": 1e-3}"""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_artifact(model_dir: Path | str, device: str = "cpu") -> Artifact:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist")
    for name in REQUIRED_FILES:
        if not (model_dir / name).is_file():
            raise ArtifactError(f"model artifact {model_dir} is missing {name}")
    config = read_config(model_dir)
    try:
        # Artifacts from before an architecture option existed were trained without it.
        config["settings"]["architecture"].setdefault("bag_features", False)
        config["settings"].setdefault("training", {}).setdefault("transfer_pool", 0)  # all of the transfer set
        settings = ModelSettings.model_validate(config["settings"])
    except (KeyError, ValidationError) as error:
        raise ArtifactError(f"{model_dir / CONFIG_FILE} has invalid settings: {error}") from None
    recorded = config.get("files", {})
    contents = {}
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        contents[name] = (model_dir / name).read_bytes()
        if recorded.get(name) != _sha256(contents[name]):
            raise ArtifactError(
                f"{model_dir / name} does not match the checksum in {CONFIG_FILE}: "
                "the file was changed or comes from another model"
            )
    try:
        tokenizer = Tokenizer(contents[TOKENIZER_FILE], max_tokens=settings.tokenizer.max_tokens)
    except RuntimeError as error:
        raise ArtifactError(f"{model_dir / TOKENIZER_FILE} is not a SentencePiece model: {error}") from None
    if tokenizer.vocab_size != config.get("vocab_size"):
        raise ArtifactError(
            f"{model_dir / TOKENIZER_FILE} has {tokenizer.vocab_size} pieces; "
            f"{CONFIG_FILE} says {config.get('vocab_size')}"
        )
    model = SequenceVAE(tokenizer.vocab_size, settings.architecture)
    import io

    try:
        state = torch.load(io.BytesIO(contents[WEIGHTS_FILE]), map_location=device, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, ValueError) as error:
        raise ArtifactError(
            f"{model_dir / WEIGHTS_FILE} does not fit the architecture in {CONFIG_FILE}: {error}"
        ) from None
    model.to(device).eval()
    model_id = compute_model_id(recorded, settings)
    if config.get("model_id") != model_id:
        raise ArtifactError(f"{model_dir / CONFIG_FILE} records model_id {config.get('model_id')!r}, computed {model_id}")
    return Artifact(model_dir, settings, model, tokenizer, model_id, config)


def update_search_defaults(model_dir: Path, search: SearchDefaults) -> None:
    """Stores calibrated search defaults; the model identity (and so every code) is unchanged."""
    config = read_config(model_dir)
    config["settings"]["search"] = search.model_dump()
    _atomic_write(Path(model_dir) / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())


class ArtifactWriter:
    """Writes the artifact files during training (best checkpoint, metrics, card, resume state)."""

    def __init__(
        self, out_dir: Path, settings: ModelSettings, corpus: Corpus, *, seed: int, command: str, sources: dict | None = None
    ):
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.corpus = corpus
        self.seed = seed
        self.command = command
        self.sources = sources or {}
        # A run resumed from a state saved before copies were kept together keeps its own split.
        self.validation_split = SPLIT_KEEPS_COPIES_TOGETHER

    def write_model(self, model: SequenceVAE, tokenizer: Tokenizer) -> str:
        weights = _state_dict_bytes(model)
        files = {WEIGHTS_FILE: _sha256(weights), TOKENIZER_FILE: _sha256(tokenizer.model_proto)}
        model_id = compute_model_id(files, self.settings)
        config = {
            "format_version": FORMAT_VERSION,
            "qsim_version": __version__,
            "model_id": model_id,
            "name": self.out_dir.name,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "metric": model.metric,
            "vocab_size": tokenizer.vocab_size,
            "settings": self.settings.model_dump(),
            "data": {
                "path": self.corpus.path,
                "sha256": self.corpus.sha256,
                "rows": len(self.corpus),
                "text_column": self.corpus.text_column,
                "label_column": self.corpus.label_column,
                "validation_split": self.validation_split,
                **self.sources,
            },
            "seed": self.seed,
            "command": self.command,
            "files": files,
        }
        # Weights and tokenizer first, config (which vouches for them) last.
        _atomic_write(self.out_dir / TOKENIZER_FILE, tokenizer.model_proto)
        _atomic_write(self.out_dir / WEIGHTS_FILE, weights)
        _atomic_write(self.out_dir / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        return model_id

    def load_tokenizer(self) -> Tokenizer:
        path = self.out_dir / TOKENIZER_FILE
        if not path.is_file():
            raise ArtifactError(f"cannot resume: {path} is missing")
        return Tokenizer.load(path, self.settings.tokenizer.max_tokens)

    def write_train_state(self, state: dict) -> None:
        import io

        buffer = io.BytesIO()
        torch.save(state | {"data_sha256": self.corpus.sha256, "seed": self.seed, "sources": self._sources_key(),
                            "columns": self._columns(), "tokenizer_sha256": self._tokenizer_sha256(),
                            "settings": json.dumps(self._resumable_settings(), sort_keys=True)}, buffer)
        _atomic_write(self.out_dir / TRAIN_STATE_FILE, buffer.getvalue())

    def load_train_state(self) -> dict | None:
        path = self.out_dir / TRAIN_STATE_FILE
        if not path.is_file():
            return None
        state = torch.load(path, weights_only=True)
        if state.get("data_sha256") != self.corpus.sha256:
            raise ArtifactError(f"cannot resume: {path} was trained on different data")
        if state.get("seed") != self.seed:
            raise ArtifactError(f"cannot resume: {path} was trained with seed {state.get('seed')}, not {self.seed}")
        if state.get("stopped", "completed") != "completed":
            how = "stopped early: its validation loss stopped improving" if state["stopped"] == "early_stopping" \
                else f"stopped ({state['stopped']})"
            raise ArtifactError(
                f"cannot resume: the run in {path} {how} at epoch {state.get('epoch')}; more epochs would not be "
                "the run it would have been (train again without --resume to change its settings)"
            )
        if state.get("sources", self._sources_key()) not in (self._sources_key(), self._sources_key(with_paths=True)):
            # (states from before this check pass; those from before paths left the key carry them)
            raise ArtifactError(
                f"cannot resume: {path} was trained with other transfer questions, pairs or start model "
                "(--transfer, --no-transfer, --pairs, --init, or the defaults that choose them, differ)"
            )
        columns = state.get("columns", self._columns())  # states from before this check pass
        if columns != self._columns():
            raise ArtifactError(
                f"cannot resume: {path} was trained on column(s) {columns} of the corpus, not {self._columns()} "
                "(--text-column and --label-column must be the same)"
            )
        if state.get("tokenizer_sha256", self._tokenizer_sha256()) != self._tokenizer_sha256():
            raise ArtifactError(f"cannot resume: {path} belongs to another run than {self.out_dir / TOKENIZER_FILE} "
                                "(a later run into this directory replaced the tokenizer)")
        if "settings" in state:  # states from before this check pass
            saved, now = _flat(_with_defaults(json.loads(state["settings"]))), _flat(self._resumable_settings())
            changed = sorted(key for key in saved.keys() | now.keys() if saved.get(key) != now.get(key))
            if changed:
                shown = ", ".join(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in changed[:4])
                raise ArtifactError(
                    f"cannot resume: {path} was trained with other settings ({shown}"
                    f"{', ...' if len(changed) > 4 else ''}); only training.epochs may change on --resume"
                )
        return state

    def _resumable_settings(self) -> dict:
        """The settings a resumed run must share with the run it continues: all that shape the model
        and its training but the number of epochs (sampling and search settings are not used in
        training)."""
        settings = self.settings.model_dump(include={"tokenizer", "architecture", "training"}, mode="json")
        settings["training"].pop("epochs", None)
        return settings

    def _columns(self) -> dict:
        return {"text": self.corpus.text_column, "label": self.corpus.label_column}

    def _tokenizer_sha256(self) -> str | None:
        path = self.out_dir / TOKENIZER_FILE
        return _sha256(path.read_bytes()) if path.is_file() else None

    def _sources_key(self, with_paths: bool = False) -> str:
        """What the transfer set, pairs and start model were, by content: the same pairs file or start
        model under another path is the same source."""
        sources = json.loads(json.dumps(self.sources))
        if not with_paths:
            sources.get("pairs", {}).pop("path", None)
            sources.get("init", {}).pop("model", None)
        return _sha256(json.dumps(sources, sort_keys=True).encode())

    def write_metrics(self, history: list, best_epoch: int, stopped: str, wall_seconds: float) -> None:
        from dataclasses import asdict

        payload = {
            "epochs": [asdict(m) for m in history],
            "best_epoch": best_epoch,
            "stopped": stopped,
            "wall_seconds": round(wall_seconds, 2),
        }
        _atomic_write(self.out_dir / METRICS_FILE, (json.dumps(payload, indent=2) + "\n").encode())

    def write_card(self, result: TrainResult) -> None:
        best = result.best
        arch = self.settings.architecture
        config = read_config(self.out_dir)
        lines = [
            f"# Model card: {self.out_dir.name}",
            "",
            f"Sequence VAE question encoder ({arch.encoder} encoder, {arch.latent} latent of {arch.latent_dim} "
            f"dimensions, {self.settings.sampling.samples} codes per question), qsim {__version__}.",
            "",
            "## How it was made",
            "",
            "```",
            self.command or "(trained from Python)",
            "```",
            "",
            f"- data: `{self.corpus.path}` ({len(self.corpus)} questions, sha256 `{self.corpus.sha256[:16]}…`)",
            f"- seed {self.seed}; stopped: {result.stopped} after {len(result.epochs)} epochs "
            f"in {result.wall_seconds:.0f} s; best epoch {result.best_epoch}",
            f"- model id `{config['model_id']}`, vocabulary {config['vocab_size']} subwords",
            "",
            "## Validation at the best epoch",
            "",
            "| reconstruction (nats/question) | KL (nats/question) | perplexity | active units | loss |",
            "|---|---|---|---|---|",
            f"| {best.val_reconstruction:.3f} | {best.val_kl:.3f} | {best.val_perplexity:.2f} | "
            f"{best.active_units}/{arch.latent_dim} | {best.val_loss:.3f} |",
            "",
            "## Settings",
            "",
            "```json",
            json.dumps(self.settings.model_dump(exclude={"search"}), indent=2),
            "```",
            "",
            "Search defaults (threshold, min_pairs) live in config.json and are set by `qsim calibrate`.",
            "",
        ]
        _atomic_write(self.out_dir / CARD_FILE, "\n".join(lines).encode())
