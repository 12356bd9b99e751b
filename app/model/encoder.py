"""The encoding API the rest of qsim uses: questions in, latent means and sampled codes out.

Sampling is deterministic per question: the noise for a text comes from a generator seeded by the
normalised text and the model identity, so the same question under the same model always gets the
same K codes, whatever else is in the batch, and a reindex reproduces the same index.

The model's `sampling.precision` picks the arithmetic. "float64" runs the trained modules in
float64 (nn.LSTM on packed sequences) and rounds the results to float32: batch composition still
changes the float64 rounding, and the float32 results only stay bitwise equal because a float64
difference in the last bits almost never crosses a float32 rounding boundary. "float32" runs the
batch-invariant path of app/model/modules/invariant.py: every matrix product is a fixed-shape
product per question and every other operation is exact or row by row, so a question's results
are bitwise the same in any batch by construction, and it is faster.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.model.artifact import Artifact, load_artifact
from app.model.modules.invariant import InvariantPosterior
from app.model.text import normalize
from app.model.vae import Batch


@dataclass
class Encoded:
    """mean (n, D) float32: the posterior means; scale (n, D) float32: posterior standard deviations
    (zeros for the vMF latent); samples (n, K, D) float32 when sampling was asked for."""

    mean: np.ndarray
    scale: np.ndarray
    samples: np.ndarray | None = None
    coverage: list[float] | None = None  # when asked for: Tokenizer.coverage of each text


class QuestionEncoder:
    def __init__(self, artifact: Artifact, device: str = "cpu"):
        self.artifact = artifact
        self.device = device
        self._dtype = torch.float64 if artifact.settings.sampling.precision == "float64" else torch.float32
        self._model = artifact.model.to(device=device, dtype=self._dtype).eval()
        # float32: the batch-invariant path (its own float32 copies of the weights)
        self._invariant = InvariantPosterior(self._model, device) if self._dtype == torch.float32 else None
        self._tokenizer = artifact.tokenizer
        self._latent = self._model.latent
        # torch modules are safe to call from several threads, but the work is CPU-bound and
        # interleaving only thrashes caches: one forward pass at a time.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path | str, device: str = "cpu") -> QuestionEncoder:
        return cls(load_artifact(model_dir, device=device), device=device)

    @property
    def model_id(self) -> str:
        return self.artifact.model_id

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def latent_dim(self) -> int:
        return self.artifact.settings.architecture.latent_dim

    @property
    def samples_per_question(self) -> int:
        return self.artifact.settings.sampling.samples

    @property
    def metric(self) -> str:
        """'l2' (Euclidean, Gaussian latent) or 'cosine' (cosine distance, vMF latent)."""
        return self.artifact.metric

    @property
    def default_threshold(self) -> float:
        return self.artifact.settings.search.threshold

    @property
    def default_min_pairs(self) -> int:
        return self.artifact.settings.search.min_pairs

    @property
    def max_tokens(self) -> int:
        return self._tokenizer.max_tokens

    def _noise_seed(self, normalised_text: str) -> int:
        digest = hashlib.blake2b(
            normalised_text.encode("utf-8"), digest_size=16, key=self.model_id.encode()[:64]
        ).digest()
        return int.from_bytes(digest, "little")

    def encode(
        self, texts: Sequence[str], k: int | None = None, batch_size: int = 256, coverage: bool = False
    ) -> Encoded:
        """Posterior means and scales for `texts`; with `k`, also k deterministic codes per text; with
        `coverage`, the share of each text the tokenizer knows (from the same tokenization).
        Raises EmptyTextError (a ValueError) for empty or whitespace-only text."""
        normalised = [normalize(t) for t in texts]
        pieces = self._tokenizer.pieces_of(normalised)
        ids = self._tokenizer.truncate(pieces)
        dim = self.latent_dim
        mean = np.empty((len(texts), dim), dtype=np.float32)
        scale = np.empty((len(texts), dim), dtype=np.float32)
        samples = np.empty((len(texts), k, dim), dtype=np.float32) if k else None
        # Length-sorted batches: less padding, and a text's batch neighbours are its own length.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        temperature = self.artifact.settings.sampling.temperature
        if self._invariant is not None:
            # Any chunk size gives the same bits; chunk_rows keeps every kernel within one grain.
            batch_size = max(1, min(batch_size, self._invariant.chunk_rows))
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                noise = self._noise([normalised[i] for i in rows], k) if k else None
                if self._invariant is not None:
                    chunk_mean, chunk_scale, codes = self._invariant.encode_chunk([ids[i] for i in rows], noise, temperature)
                else:
                    posterior = self._model.posterior(Batch.from_ids([ids[i] for i in rows], self.device))
                    chunk_mean, chunk_scale = posterior.mean, posterior.scale
                    codes = self._latent.rsample(posterior, noise.astype(np.float64), temperature) if k else None
                mean[rows] = chunk_mean.float().cpu().numpy()
                scale[rows] = chunk_scale.float().cpu().numpy()
                if k:
                    samples[rows] = codes.float().cpu().numpy()
        return Encoded(mean, scale, samples, self._tokenizer.coverage_of(normalised, pieces) if coverage else None)

    def _noise(self, normalised: Sequence[str], k: int) -> np.ndarray:
        """(n, k, ...) float32: each text's own noise, from a generator seeded by the text and the model id."""
        return np.concatenate(
            [
                self._latent.draw_noise(np.random.Generator(np.random.Philox(key=self._noise_seed(text))), 1, k)
                for text in normalised
            ]
        )

    def coverage(self, texts: Sequence[str]) -> list[float]:
        """Share of each text's visible characters the model's tokenizer knows (see Tokenizer.coverage)."""
        return self._tokenizer.coverage(texts)

    def sample(self, texts: Sequence[str], k: int | None = None, batch_size: int = 256) -> np.ndarray:
        """(n, k, D) float32 codes, k = the model's samples per question unless given."""
        return self.encode(texts, k or self.samples_per_question, batch_size).samples
