"""Synthetic latent codes shaped like a question-VAE's, with every parameter explicit.

A question's posterior mean sits in a sub-cluster of an intent cluster (intents ~ N(0, intent^2),
sub-clusters ~ intent + N(0, subcluster^2), means ~ sub-cluster + N(0, question^2), per dimension);
its posterior has one standard deviation per question, log-normal around `scale`; its K codes are
mean + scale * N(0, I). Queries are fresh questions drawn the same way (new means in existing
sub-clusters), like a customer asking something the desk has answered in other words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CodeShape:
    name: str
    intents: int = 77
    subclusters: int = 8  # per intent
    intent_spread: float = 1.0  # std per dimension of intent centres
    subcluster_spread: float = 0.35  # std per dimension of sub-cluster centres around their intent
    question_spread: float = 0.12  # std per dimension of a question's mean around its sub-cluster
    scale: float = 0.05  # median posterior std per dimension
    scale_spread: float = 0.3  # log-normal sigma of the per-question posterior std

    def describe(self) -> str:
        fields = asdict(self)
        return f"{fields.pop('name')}: " + ", ".join(f"{k}={v}" for k, v in fields.items())


SHAPES = {
    # Posteriors well inside their sub-cluster: the regime a trained model is meant to reach.
    "separated": CodeShape("separated"),
    # Measured on the provisional BANKING77 model (var/provisional, epoch 2 of training): posterior
    # std ~0.95 per dimension against a spread of means ~0.29 per dimension, i.e. the codes are
    # mostly posterior noise.
    "provisional": CodeShape(
        "provisional", intent_spread=0.22, subcluster_spread=0.15, question_spread=0.1, scale=0.95, scale_spread=0.02,
    ),
}


class CodeGenerator:
    def __init__(self, shape: CodeShape, dim: int = 128, samples: int = 5, seed: int = 0):
        self.shape = shape
        self.dim = dim
        self.samples = samples
        rng = np.random.default_rng(seed)
        intents = rng.normal(0.0, shape.intent_spread, (shape.intents, dim))
        offsets = rng.normal(0.0, shape.subcluster_spread, (shape.intents, shape.subclusters, dim))
        self.subclusters = (intents[:, None, :] + offsets).reshape(-1, dim).astype(np.float32)
        self.seed = seed

    def codes(self, count: int, stream: int, chunk: int = 65536) -> np.ndarray:
        """(count, K, D) float32, reproducible per `stream`; generated in chunks to bound memory."""
        rng = np.random.default_rng([self.seed, stream])
        out = np.empty((count, self.samples, self.dim), dtype=np.float32)
        shape = self.shape
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            centre = self.subclusters[rng.integers(0, len(self.subclusters), n)]
            mean = centre + rng.normal(0.0, shape.question_spread, (n, self.dim)).astype(np.float32)
            scale = (shape.scale * np.exp(rng.normal(0.0, shape.scale_spread, n))).astype(np.float32)
            noise = rng.standard_normal((n, self.samples, self.dim), dtype=np.float32)
            out[start : start + n] = mean[:, None, :] + scale[:, None, None] * noise
        return out
