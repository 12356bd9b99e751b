"""`qsim train`: fits the sequence VAE on a question corpus and writes a model artifact.

Every epoch reseeds from (seed, epoch), so a run resumed from its last finished epoch ends with the
same weights as an uninterrupted run, and two runs with one seed are identical on the CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.model.artifact import SPLIT_KEEPS_COPIES_TOGETHER, TRAIN_STATE_FILE, Artifact, ArtifactWriter
from app.model.config import ModelSettings, TrainingConfig
from app.model.data import Corpus, PairsCorpus
from app.model.objectives import LatentObjectives, label_indices, pair_contrast
from app.model.teacher import minilm_available, teacher_embeddings
from app.model.text import EmptyTextError, normalize
from app.model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from app.model.vae import Batch, SequenceVAE, corrupt

logger = logging.getLogger(__name__)


# Past this many nats per token (perplexity e^700, float64's limit) the decoder is not learning:
# the run has diverged.
DIVERGED_NATS_PER_TOKEN = 700.0


class TrainingDiverged(ValueError):
    """The loss left the finite range (usually a learning rate far too high for the model)."""


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
    learning_rate: float | None = None  # at the epoch's last step


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


def learning_rate_at(progress_epochs: float, total_epochs: int, cfg: TrainingConfig) -> float:
    """Learning rate after `progress_epochs` (fractional) epochs: constant, or a cosine from
    learning_rate down to learning_rate * min_learning_rate_fraction at the last step of the run."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = min(1.0, max(0.0, progress_epochs / total_epochs))
    floor = cfg.learning_rate * cfg.min_learning_rate_fraction
    return floor + (cfg.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def annealing_done_at(total_epochs: int, cfg: TrainingConfig) -> float:
    """Epoch from which beta has reached its full value at least once."""
    if cfg.kl_schedule == "constant":
        return 0.0
    if cfg.kl_schedule == "linear":
        return cfg.kl_warmup_epochs
    return total_epochs / cfg.kl_cycles * cfg.kl_cycle_ratio


# Fewer validation rows than this: no active units is not read as a collapse (the KL still is).
MIN_ROWS_FOR_ACTIVE_UNITS = 10


def count_active_units(means: np.ndarray, threshold: float) -> int:
    """Dimensions whose posterior mean varies across the data by more than `threshold` (Burda et al.)."""
    return int((means.var(axis=0) > threshold).sum())


def split_train_validation(
    n: int, fraction: float, seed: int, texts: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): a seeded `fraction` of the rows held out. With `texts`,
    the copies of a question (the same normalised text) are held out or kept together, so a desk
    log's repeats cannot put a validation question's own text among the stored ones (a calibration
    would then see exact matches and believe itself): questions are taken in the seeded order, each
    at the place of one of its copies drawn at random, and a question joins the validation rows
    only while it fits in the fraction, so a question asked often stays with the training rows.
    Without repeats the split is the same either way."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * fraction))))
    if texts is None:
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    copies: dict[str, list[int]] = {}
    for row in range(n):
        copies.setdefault(_copy_key(texts[row]), []).append(row)
    pick = np.random.default_rng([seed, 0xC0B1])
    placed = sorted(copies.values(), key=lambda rows: int(position[rows[0] if len(rows) == 1 else rows[pick.integers(len(rows))]]))
    held: list[int] = []
    for rows in placed:
        if len(held) + len(rows) <= n_val:
            held.extend(rows)
        if len(held) == n_val:
            break
    if not held:  # every question is asked more often than the fraction holds: rows, as without texts
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    in_validation = np.zeros(n, dtype=bool)
    in_validation[held] = True
    return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


def _copy_key(text: str) -> str:
    try:
        return normalize(text)
    except EmptyTextError:
        return text


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


def teacher_piece_embeddings(tokenizer: Tokenizer, teacher: str, dim: int, cache_dir: Path | None, seed: int) -> torch.Tensor:
    """(V, dim) subword embeddings from the teacher (the model2vec recipe): every piece's text is
    embedded by the teacher, the vectors are centred and reduced to `dim` by PCA and scaled to the
    spread of a default embedding. Special and byte pieces keep a random start."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(tokenizer.vocab_size, dim, generator=generator)
    texts, rows = [], []
    for piece_id in range(tokenizer.vocab_size):
        if piece_id in (PAD_ID, UNK_ID, BOS_ID, EOS_ID) or tokenizer.is_byte(piece_id):
            continue
        text = tokenizer.piece(piece_id).replace("\u2581", " ").strip()
        if text:
            texts.append(text)
            rows.append(piece_id)
    vectors = teacher_embeddings(teacher, texts, cache_dir)
    centred = vectors - vectors.mean(0, keepdims=True)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ components[: min(dim, components.shape[0])].T
    reduced = reduced / max(float(reduced.std()), 1e-8)
    table[rows, : reduced.shape[1]] = torch.as_tensor(reduced, dtype=table.dtype)
    table[PAD_ID] = 0.0
    return table


class Trainer:
    """Fits the VAE on `corpus` (its labels, when it has them), with optional unlabelled
    `transfer` questions (sampled afresh every epoch), known duplicate `pairs`, and the teacher.
    `init`: a trained artifact to start from (its tokenizer and weights; fine-tuning)."""

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
        transfer: list[str] | None = None,
        pairs: PairsCorpus | None = None,
        init: Artifact | None = None,
        teacher_cache: Path | None = None,
    ):
        self.corpus = corpus
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.seed = seed
        self.progress = progress
        self.log = log
        self.cfg = settings.training
        self.transfer = self._transfer_pool(list(dict.fromkeys(transfer or [])))
        self.pairs = pairs
        self.init = init
        self.teacher_cache = teacher_cache
        self.teacher_vectors: np.ndarray | None = None  # (texts, E) once training has computed them
        self.validation_rows: np.ndarray | None = None
        if init is not None:
            settings.tokenizer = init.settings.tokenizer
            settings.architecture = init.settings.architecture
        if self.cfg.teacher != "none" and not minilm_available():
            self.log(
                f"note: teacher {self.cfg.teacher} is not installed (pip install 'qsim[teacher]'): training without "
                "distillation; without labels or pairs the latent then knows little of meaning"
            )
            self.cfg.teacher = "none"
        if self.cfg.teacher == "none":
            self.cfg.embedding_init = "random"
        self.writer = ArtifactWriter(self.out_dir, settings, corpus, seed=seed, command=command, sources=self._sources())

    def _transfer_pool(self, transfer: list[str]) -> list[str]:
        """At most `transfer_pool` of the transfer questions, a sample fixed by the seed, in file order."""
        pool = self.cfg.transfer_pool
        self.transfer_offered = len(transfer)
        if not pool or len(transfer) <= pool:
            return transfer
        kept = np.sort(np.random.default_rng(self.seed).choice(len(transfer), pool, replace=False))
        self.log(f"transfer set: a pool of {pool} of its {len(transfer)} questions (training.transfer_pool), "
                 f"{min(pool, self.cfg.transfer_per_epoch)} of them per epoch")
        return [transfer[i] for i in kept]

    def _sources(self) -> dict:
        sources: dict = {}
        if self.transfer:
            digest = hashlib.sha256("\n".join(self.transfer).encode()).hexdigest()
            sources["transfer"] = {"questions": len(self.transfer), "sha256": digest}
            if self.transfer_offered > len(self.transfer):
                sources["transfer"]["pool_of"] = self.transfer_offered
        if self.pairs is not None:
            sources["pairs"] = {"path": self.pairs.path, "sha256": self.pairs.sha256, "rows": len(self.pairs)}
        if self.init is not None:
            sources["init"] = {"model": str(self.init.directory), "model_id": self.init.model_id}
        return sources

    def _texts(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
        """All training texts: the corpus, then the transfer questions, then the pairs' texts not
        already there -> (texts, transfer rows, pair rows (P, 2), duplicate flags (P,) or None)."""
        texts = list(self.corpus.texts)
        position = {text: i for i, text in enumerate(texts)}
        transfer_rows = []
        for text in self.transfer:
            if text not in position:
                position[text] = len(texts)
                texts.append(text)
                transfer_rows.append(position[text])
        if self.pairs is None:
            return texts, np.array(transfer_rows, dtype=np.int64), np.zeros((0, 2), dtype=np.int64), None
        pair_rows, duplicate = [], []
        for left, right, same, held in zip(self.pairs.left, self.pairs.right, self.pairs.duplicate,
                                           self._held_out_pair_flags(), strict=True):
            if held:
                continue
            for text in (left, right):
                if text not in position:
                    position[text] = len(texts)
                    texts.append(text)
            pair_rows.append((position[left], position[right]))
            duplicate.append(same)
        return (texts, np.array(transfer_rows, dtype=np.int64), np.array(pair_rows, dtype=np.int64).reshape(-1, 2),
                np.array(duplicate, dtype=bool))

    def _held_out_pair_flags(self) -> list[bool]:
        """Which pairs training leaves out, for the calibration that ends it: every pair with a
        validation question on either side (training on it would teach the model the validation rows)
        and a seeded val_fraction of the others (so that a pairs file beside the corpus leaves some)."""
        validation = {self.corpus.texts[i] for i in self.validation_rows}
        rng = np.random.default_rng([self.seed, 0x9A125])
        draws = rng.random(len(self.pairs))
        return [left in validation or right in validation or bool(draw < self.cfg.val_fraction)
                for left, right, draw in zip(self.pairs.left, self.pairs.right, draws, strict=True)]

    @property
    def held_out_pairs(self) -> PairsCorpus | None:
        """The pairs training left out (_held_out_pair_flags); None without a pairs file. Known once
        run() has split the corpus."""
        if self.pairs is None:
            return None
        kept = [i for i, held in enumerate(self._held_out_pair_flags()) if held]
        return PairsCorpus([self.pairs.left[i] for i in kept], [self.pairs.right[i] for i in kept],
                           [self.pairs.duplicate[i] for i in kept], sha256=self.pairs.sha256, path=self.pairs.path,
                           columns=self.pairs.columns)

    def run(self, resume: bool = False) -> TrainResult:
        torch.manual_seed(self.seed)
        state = self.writer.load_train_state() if resume else None
        # A state saved before copies were kept together resumes on the split it started with.
        together = state is None or state.get("split") == SPLIT_KEEPS_COPIES_TOGETHER
        train_idx, val_idx = split_train_validation(
            len(self.corpus), self.cfg.val_fraction, self.seed, self.corpus.texts if together else None
        )
        self.validation_rows = val_idx
        self.writer.validation_split = SPLIT_KEEPS_COPIES_TOGETHER if together else "rows"
        texts, transfer_rows, pair_rows, pair_duplicate = self._texts()
        if self.pairs is not None:
            self.log(f"pairs: {len(pair_rows)} of {len(self.pairs)} train the pairs term; the others (every pair with "
                     "a validation question, and a seeded share of the rest) are held out for the calibration")
        if resume and state is None:
            self.log(f"no {TRAIN_STATE_FILE} in {self.out_dir}; starting from scratch")
        if state is not None:
            tokenizer = self.writer.load_tokenizer()
        elif self.init is not None:
            tokenizer = self.init.tokenizer
        else:
            tokenizer = Tokenizer.train(
                [texts[i] for i in train_idx] + [texts[i] for i in range(len(self.corpus), len(texts))],
                vocab_size=self.settings.tokenizer.vocab_size,
                model_type=self.settings.tokenizer.model_type,
                max_tokens=self.settings.tokenizer.max_tokens,
            )
        ids = tokenizer.encode(texts)
        lengths = np.array([len(x) for x in ids])
        torch.manual_seed(self.seed)
        model = SequenceVAE(tokenizer.vocab_size, self.settings.architecture)
        if self.init is not None:
            model.load_state_dict(self.init.model.state_dict())
            self.log(f"starting from {self.init.directory} (model {self.init.model_id})")
        elif state is None and self.cfg.embedding_init == "teacher":
            table = teacher_piece_embeddings(
                tokenizer, self.cfg.teacher, self.settings.architecture.embedding_dim, self.teacher_cache, self.seed
            )
            with torch.no_grad():
                model.encoder.embedding.weight.copy_(table)
                model.decoder.embedding.weight.copy_(table)
            self.log(f"subword embeddings: {self.cfg.teacher}'s embedding of each piece, reduced by PCA")
        objectives = self._objectives(model, texts)
        self._pairs = (pair_rows, pair_duplicate)
        self._transfer_rows = transfer_rows
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
            epoch_rows = self._epoch_rows(train_idx, epoch)
            train_stats = self._train_epoch(model, objectives, optimizer, ids, lengths, epoch_rows, epoch)
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
                learning_rate=train_stats["learning_rate"],
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
                    "split": SPLIT_KEEPS_COPIES_TOGETHER if together else "rows",
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "objectives": objectives.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": [asdict(m) for m in history],
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "stopped": stopped,
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

    def _active_threshold(self) -> float:
        """On the unit sphere (vMF) the variances of all dimensions add up to at most 1, so an even
        spread over D dimensions gives each 1/D: the threshold is scaled by 64/D above 64
        dimensions to mean the same share of the spread at any size."""
        threshold = self.cfg.active_unit_threshold
        dim = self.settings.architecture.latent_dim
        return threshold * 64 / dim if self.settings.architecture.latent == "vmf" and dim > 64 else threshold

    def _collapse_reason(self, metrics: EpochMetrics) -> str | None:
        if self.settings.architecture.latent == "vmf":
            return None  # fixed kappa: the KL is a constant and cannot collapse
        if metrics.val_kl <= self.cfg.collapse_kl:
            return f"posterior collapse: KL fell to {metrics.val_kl:.4f} nats per question"
        # Active units are the variance of the validation means: with a handful of validation rows
        # (one row has none) they say nothing about the latent.
        if metrics.active_units == 0 and len(self.validation_rows) >= MIN_ROWS_FOR_ACTIVE_UNITS:
            return "posterior collapse: no active latent units"
        return None

    def _epoch_rows(self, train_idx: np.ndarray, epoch: int) -> np.ndarray:
        """The corpus's training rows plus this epoch's sample of the transfer set."""
        transfer = self._transfer_rows
        if len(transfer) > self.cfg.transfer_per_epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x7F])
            transfer = np.sort(rng.choice(transfer, self.cfg.transfer_per_epoch, replace=False))
        return np.concatenate([train_idx, transfer]).astype(np.int64)

    def _objectives(self, model: SequenceVAE, texts: list[str]) -> LatentObjectives:
        labels, names = (None, [])
        if self.corpus.labels is not None and self.cfg.label_weight > 0:
            padded = list(self.corpus.labels) + [None] * (len(texts) - len(self.corpus))
            labels, names = label_indices(padded)
            unlabelled = sum(label is None for label in self.corpus.labels)
            self.log(f"supervision: {len(names)} categories from column {self.corpus.label_column!r}"
                     + (f" ({unlabelled} rows without a label learn from the rest)" if unlabelled else ""))
        teacher = None
        if self.cfg.teacher != "none" and (self.cfg.teacher_weight > 0 or self.cfg.teacher_regression_weight > 0):
            self.log(f"supervision: distilling {self.cfg.teacher} (its embeddings computed once and cached)")
            teacher = teacher_embeddings(self.cfg.teacher, texts, self.teacher_cache, log=self.log)
        self.teacher_vectors = teacher
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
            teacher_regression_weight=self.cfg.teacher_regression_weight,
            label_margin=self.cfg.label_margin,
            label_contrast_weight=self.cfg.label_contrast_weight,
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
            encoder_batch = None
            if self.cfg.augment > 0:
                noisy = [corrupt(ids[i], rng) if rng.random() < self.cfg.augment else ids[i] for i in rows]
                encoder_batch = Batch.from_ids(noisy)
            beta = beta_at(epoch - 1 + step / len(batches), self.cfg.epochs, self.cfg)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(epoch - 1 + step / len(batches), self.cfg.epochs, self.cfg)
            out = model(batch, rng, self.cfg.word_dropout, self.cfg.free_bits, generator, encoder_batch)
            reconstruction = out.reconstruction.mean()
            supervised = objectives.loss(out.codes, out.posterior.mean, rows)
            if len(self._pairs[0]):
                supervised = supervised + self.cfg.pairs_weight * self._pair_loss(model, ids, rng)
            loss = reconstruction + beta * out.kl_penalty + supervised
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}, step {step + 1}: the loss is {loss.item()} "
                    f"(training.learning_rate {self.cfg.learning_rate:g} is probably too high; the default is "
                    f"{TrainingConfig.model_fields['learning_rate'].default:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            optimizer.step()
            n = len(rows)
            seen += n
            totals["loss"] += loss.item() * n  # what was optimised: the KL term with its free bits
            totals["supervised"] += supervised.item() * n
            totals["reconstruction"] += reconstruction.item() * n
            totals["kl"] += out.kl.mean().item() * n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.3f}", kl=f"{totals['kl'] / seen:.2f}")
        return {k: v / max(seen, 1) for k, v in totals.items()} | {"beta": beta, "learning_rate": optimizer.param_groups[0]["lr"]}

    def _pair_loss(self, model: SequenceVAE, ids: list[list[int]], rng: np.random.Generator) -> torch.Tensor:
        """The pairs term on a random batch of known pairs (sampled codes of both sides)."""
        pair_rows, duplicate = self._pairs
        pick = rng.choice(len(pair_rows), min(len(pair_rows), self.cfg.batch_size), replace=False)
        sides = pair_rows[pick]
        posterior = model.posterior(Batch.from_ids([ids[i] for i in sides.reshape(-1)]))
        codes = model.latent.rsample(posterior, model.latent.draw_noise(rng, sides.size, 1))[:, 0]
        codes = codes.view(len(pick), 2, -1)
        return pair_contrast(
            codes[:, 0], codes[:, 1], torch.as_tensor(duplicate[pick]), model.metric, self.cfg.pairs_margin
        )

    @torch.inference_mode()
    def _evaluate(self, model, objectives, ids, val_idx, epoch) -> dict:
        model.eval()
        rng = np.random.default_rng([self.seed, 0xE7A1])
        reconstruction = kl = tokens = supervised = 0.0
        correct = labelled = 0
        means = []
        for start in range(0, len(val_idx), 256):
            rows = val_idx[start : start + 256]
            batch = Batch.from_ids([ids[i] for i in rows])
            out = model(batch, rng, word_dropout=0.0, free_bits=0.0)
            reconstruction += out.reconstruction.sum().item()
            kl += out.kl.sum().item()
            tokens += out.target_tokens.sum().item()
            supervised += objectives.loss(out.codes, out.posterior.mean, rows).item() * len(rows)
            hits = objectives.label_hits(out.posterior.mean, rows)
            if hits is not None:
                correct, labelled = correct + hits[0], labelled + hits[1]
            means.append(out.posterior.mean.numpy())
        n = len(val_idx)
        beta = self.cfg.beta
        per_token = reconstruction / max(tokens, 1)
        if not math.isfinite(per_token) or per_token > DIVERGED_NATS_PER_TOKEN:
            raise TrainingDiverged(
                f"training diverged: the validation reconstruction is {per_token:.4g} nats per token "
                f"(training.learning_rate {self.cfg.learning_rate:g} is probably too high; the default is "
                f"{TrainingConfig.model_fields['learning_rate'].default:g})"
            )
        return {
            "loss": (reconstruction + beta * kl + supervised) / n,
            "supervised": supervised / n,
            "label_accuracy": correct / labelled if labelled else None,
            "reconstruction": reconstruction / n,
            "kl": kl / n,
            "perplexity": math.exp(per_token),
            "active_units": count_active_units(np.concatenate(means), self._active_threshold()),
        }
