"""`qsim train`: fits the sequence VAE on a question corpus and writes a model artifact.

Every epoch reseeds from (seed, epoch), so a run resumed from its last finished epoch ends with the
same weights as an uninterrupted run, and two runs with one seed are identical on the CPU.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.model.artifact import TRAIN_STATE_FILE, ArtifactWriter
from app.model.config import ModelSettings, TrainingConfig
from app.model.data import Corpus
from app.model.objectives import LatentObjectives, label_indices
from app.model.teacher import teacher_embeddings
from app.model.tokenizer import Tokenizer
from app.model.vae import Batch, SequenceVAE

logger = logging.getLogger(__name__)


class CollapseWarning(UserWarning):
    """The latent stopped carrying information (posterior collapse)."""


@dataclass
class EpochMetrics:
    epoch: int
    beta: float
    train_loss: float
    train_reconstruction: float
    train_kl: float
    val_loss: float
    val_reconstruction: float
    val_kl: float
    val_perplexity: float
    active_units: int
    wall_seconds: float
    train_supervised: float = 0.0
    val_supervised: float = 0.0
    val_label_accuracy: float | None = None


@dataclass
class TrainResult:
    out_dir: Path
    epochs: list[EpochMetrics]
    best_epoch: int
    stopped: str  # "completed", "early_stopping", "collapse"
    wall_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> EpochMetrics:
        return next(m for m in self.epochs if m.epoch == self.best_epoch)


def beta_at(progress_epochs: float, total_epochs: int, cfg: TrainingConfig) -> float:
    """KL weight after `progress_epochs` (fractional) epochs of training."""
    if cfg.kl_schedule == "constant":
        return cfg.beta
    if cfg.kl_schedule == "linear":
        if cfg.kl_warmup_epochs <= 0:
            return cfg.beta
        return cfg.beta * min(1.0, progress_epochs / cfg.kl_warmup_epochs)
    cycle_length = total_epochs / cfg.kl_cycles
    position = (progress_epochs % cycle_length) / cycle_length
    return cfg.beta * min(1.0, position / cfg.kl_cycle_ratio)


def annealing_done_at(total_epochs: int, cfg: TrainingConfig) -> float:
    """Epoch from which beta has reached its full value at least once."""
    if cfg.kl_schedule == "constant":
        return 0.0
    if cfg.kl_schedule == "linear":
        return cfg.kl_warmup_epochs
    return total_epochs / cfg.kl_cycles * cfg.kl_cycle_ratio


def count_active_units(means: np.ndarray, threshold: float) -> int:
    """Dimensions whose posterior mean varies across the data by more than `threshold` (Burda et al.)."""
    return int((means.var(axis=0) > threshold).sum())


def split_train_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * fraction))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding), in shuffled order."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


class Trainer:
    def __init__(
        self,
        corpus: Corpus,
        out_dir: Path,
        settings: ModelSettings,
        *,
        seed: int,
        command: str = "",
        progress: bool = True,
        log: Callable[[str], None] = logger.info,
    ):
        self.corpus = corpus
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.seed = seed
        self.progress = progress
        self.log = log
        self.cfg = settings.training
        self.writer = ArtifactWriter(self.out_dir, settings, corpus, seed=seed, command=command)

    def run(self, resume: bool = False) -> TrainResult:
        torch.manual_seed(self.seed)
        train_idx, val_idx = split_train_validation(len(self.corpus), self.cfg.val_fraction, self.seed)
        state = self.writer.load_train_state() if resume else None
        if resume and state is None:
            self.log(f"no {TRAIN_STATE_FILE} in {self.out_dir}; starting from scratch")
        if state is not None:
            tokenizer = self.writer.load_tokenizer()
        else:
            tokenizer = Tokenizer.train(
                [self.corpus.texts[i] for i in train_idx],
                vocab_size=self.settings.tokenizer.vocab_size,
                model_type=self.settings.tokenizer.model_type,
                max_tokens=self.settings.tokenizer.max_tokens,
            )
        ids = tokenizer.encode(self.corpus.texts)
        lengths = np.array([len(x) for x in ids])
        torch.manual_seed(self.seed)
        model = SequenceVAE(tokenizer.vocab_size, self.settings.architecture)
        objectives = self._objectives(model)
        optimizer = torch.optim.Adam(
            [*model.parameters(), *objectives.parameters()], lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        history: list[EpochMetrics] = []
        best_loss, best_epoch, stale, first_epoch = math.inf, 0, 0, 1
        elapsed_before = 0.0
        if state is not None:
            model.load_state_dict(state["model"])
            objectives.load_state_dict(state.get("objectives", {}), strict=False)
            optimizer.load_state_dict(state["optimizer"])
            history = [EpochMetrics(**m) for m in state["history"]]
            best_loss, best_epoch, stale = state["best_loss"], state["best_epoch"], state["stale"]
            first_epoch = state["epoch"] + 1
            elapsed_before = state["wall_seconds"]
            self.log(f"resuming after epoch {state['epoch']} (best epoch {best_epoch})")

        started = time.perf_counter() - elapsed_before
        stopped = "completed"
        check_collapse_from = annealing_done_at(self.cfg.epochs, self.cfg) + self.cfg.collapse_after_epochs
        for epoch in range(first_epoch, self.cfg.epochs + 1):
            epoch_started = time.perf_counter()
            train_stats = self._train_epoch(model, objectives, optimizer, ids, lengths, train_idx, epoch)
            val = self._evaluate(model, objectives, ids, val_idx, epoch)
            metrics = EpochMetrics(
                epoch=epoch,
                beta=train_stats["beta"],
                train_loss=train_stats["loss"],
                train_reconstruction=train_stats["reconstruction"],
                train_kl=train_stats["kl"],
                val_loss=val["loss"],
                val_reconstruction=val["reconstruction"],
                val_kl=val["kl"],
                val_perplexity=val["perplexity"],
                active_units=val["active_units"],
                wall_seconds=round(time.perf_counter() - epoch_started, 3),
                train_supervised=train_stats["supervised"],
                val_supervised=val["supervised"],
                val_label_accuracy=val["label_accuracy"],
            )
            history.append(metrics)
            self.log(
                f"epoch {epoch}: loss {metrics.train_loss:.3f} | val loss {metrics.val_loss:.3f} "
                f"reconstruction {metrics.val_reconstruction:.3f} KL {metrics.val_kl:.3f} "
                f"active units {metrics.active_units}/{self.settings.architecture.latent_dim} beta {metrics.beta:.3f}"
                + (f" | supervised {metrics.val_supervised:.3f}" if objectives.active else "")
                + (f" label accuracy {metrics.val_label_accuracy:.3f}" if metrics.val_label_accuracy is not None else "")
            )
            if metrics.val_loss < best_loss:
                best_loss, best_epoch, stale = metrics.val_loss, epoch, 0
                self.writer.write_model(model, tokenizer)
            else:
                stale += 1
            collapsed = self._collapse_reason(metrics) if epoch >= check_collapse_from else None
            if collapsed:
                warnings.warn(CollapseWarning(collapsed), stacklevel=2)
                self.log(f"WARNING: {collapsed}; stopping")
                stopped = "collapse"
            elif stale >= self.cfg.patience:
                self.log(f"no better validation loss for {stale} epochs; stopping early")
                stopped = "early_stopping"
            wall = time.perf_counter() - started
            self.writer.write_train_state(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "objectives": objectives.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": [asdict(m) for m in history],
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "wall_seconds": wall,
                }
            )
            self.writer.write_metrics(history, best_epoch, stopped, wall)
            if stopped != "completed":
                break
        result = TrainResult(self.out_dir, history, best_epoch, stopped, time.perf_counter() - started)
        self.writer.write_metrics(history, best_epoch, stopped, result.wall_seconds)
        self.writer.write_card(result)
        return result

    def _collapse_reason(self, metrics: EpochMetrics) -> str | None:
        if self.settings.architecture.latent == "vmf":
            return None  # fixed kappa: the KL is a constant and cannot collapse
        if metrics.val_kl <= self.cfg.collapse_kl:
            return f"posterior collapse: KL fell to {metrics.val_kl:.4f} nats per question"
        if metrics.active_units == 0:
            return "posterior collapse: no active latent units"
        return None

    def _objectives(self, model: SequenceVAE) -> LatentObjectives:
        labels, names = (None, [])
        if self.corpus.labels is not None and self.cfg.label_weight > 0:
            labels, names = label_indices(self.corpus.labels)
            self.log(f"supervision: {len(names)} categories from column {self.corpus.label_column!r}")
        teacher = None
        if self.cfg.teacher != "none" and self.cfg.teacher_weight > 0:
            self.log(f"supervision: distilling similarities from {self.cfg.teacher} (computed once, here)")
            teacher = teacher_embeddings(self.cfg.teacher, self.corpus.texts)
        return LatentObjectives(
            metric=model.metric,
            latent_dim=self.settings.architecture.latent_dim,
            labels=labels,
            num_classes=len(names),
            label_weight=self.cfg.label_weight,
            label_temperature=self.cfg.label_temperature,
            teacher=teacher,
            teacher_weight=self.cfg.teacher_weight,
            teacher_temperature=self.cfg.teacher_temperature,
            student_temperature=self.cfg.student_temperature,
            seed=self.seed,
        )

    def _train_epoch(self, model, objectives, optimizer, ids, lengths, train_idx, epoch) -> dict:
        model.train()
        seed = _epoch_seed(self.seed, epoch)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        batches = _batches(lengths[train_idx], self.cfg.batch_size, rng)
        totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "supervised": 0.0}
        seen = 0
        beta = 0.0
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.cfg.epochs}", disable=not self.progress, leave=False)
        for step, local in enumerate(bar):
            rows = train_idx[local]
            batch = Batch.from_ids([ids[i] for i in rows])
            beta = beta_at(epoch - 1 + step / len(batches), self.cfg.epochs, self.cfg)
            out = model(batch, rng, self.cfg.word_dropout, self.cfg.free_bits, generator)
            reconstruction = out.reconstruction.mean()
            supervised = objectives.loss(out.codes, out.posterior.mean, rows)
            loss = reconstruction + beta * out.kl_penalty + supervised
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            optimizer.step()
            n = len(rows)
            seen += n
            totals["loss"] += (reconstruction.item() + beta * out.kl.mean().item() + supervised.item()) * n
            totals["supervised"] += supervised.item() * n
            totals["reconstruction"] += reconstruction.item() * n
            totals["kl"] += out.kl.mean().item() * n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.3f}", kl=f"{totals['kl'] / seen:.2f}")
        return {k: v / max(seen, 1) for k, v in totals.items()} | {"beta": beta}

    @torch.inference_mode()
    def _evaluate(self, model, objectives, ids, val_idx, epoch) -> dict:
        model.eval()
        rng = np.random.default_rng([self.seed, 0xE7A1])
        reconstruction = kl = tokens = supervised = correct = 0.0
        means = []
        for start in range(0, len(val_idx), 256):
            rows = val_idx[start : start + 256]
            batch = Batch.from_ids([ids[i] for i in rows])
            out = model(batch, rng, word_dropout=0.0, free_bits=0.0)
            reconstruction += out.reconstruction.sum().item()
            kl += out.kl.sum().item()
            tokens += out.target_tokens.sum().item()
            supervised += objectives.loss(out.codes, out.posterior.mean, rows).item() * len(rows)
            correct += (objectives.label_accuracy(out.posterior.mean, rows) or 0.0) * len(rows)
            means.append(out.posterior.mean.numpy())
        n = len(val_idx)
        beta = self.cfg.beta
        return {
            "loss": (reconstruction + beta * kl + supervised) / n,
            "supervised": supervised / n,
            "label_accuracy": correct / n if objectives.classifier is not None else None,
            "reconstruction": reconstruction / n,
            "kl": kl / n,
            "perplexity": math.exp(reconstruction / max(tokens, 1)),
            "active_units": count_active_units(np.concatenate(means), self.cfg.active_unit_threshold),
        }
