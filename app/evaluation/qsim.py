"""qsim as a retriever: the model's codes in the service's own index, searched with the service's rule.

Ranking (P@1, MAP@10, hit@10) asks the index for the `k` nearest questions by closest pair distance
(threshold = infinity), the order the service returns. The threshold rule's returned sets come from
the same index at a finite threshold, with no limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.model.encoder import Encoded, QuestionEncoder


def build_index(encoder: QuestionEncoder, codes: np.ndarray, device: str = "auto"):
    """codes (N, K, D) float32 -> an exact SimilarityIndex holding them under ids 0..N-1."""
    from app.search import SimilarityIndex

    index = SimilarityIndex(
        codes.shape[2], codes.shape[1], encoder.metric, kind="exact", device=device, model_id=encoder.model_id
    )
    index.add(np.arange(len(codes), dtype=np.int64), np.ascontiguousarray(codes, dtype=np.float32))
    return index


def codes_of(encoded: Encoded, mean_code: bool) -> np.ndarray:
    """(n, K, D) sampled codes, or (n, 1, D) means for the single-code variant."""
    return encoded.mean[:, None, :] if mean_code else encoded.samples


def subset(encoded: Encoded, rows: np.ndarray) -> Encoded:
    return Encoded(
        encoded.mean[rows], encoded.scale[rows], None if encoded.samples is None else encoded.samples[rows]
    )


class QsimRetriever:
    """mean_code=False: K sampled codes per question, ranked by the closest of the K x K pairs (the
    service). mean_code=True: one code per question, the posterior mean (the comparison point)."""

    def __init__(self, encoder: QuestionEncoder, *, mean_code: bool = False, device: str = "auto"):
        self.encoder = encoder
        self.mean_code = mean_code
        self.device = device
        pairs = encoder.samples_per_question**2
        self.name = "qsim, mean code" if mean_code else f"qsim, any-of-{pairs} (closest pair)"
        self.corpus: Encoded | None = None
        self.index = None

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Encoded:
        k = None if self.mean_code else self.encoder.samples_per_question
        return self.encoder.encode(texts, k, batch_size=batch_size)

    def fit(self, corpus_texts: Sequence[str], encoded: Encoded | None = None) -> None:
        """Encodes the corpus (or takes `encoded`, the same texts already encoded) and indexes it."""
        self.corpus = encoded if encoded is not None else self.encode(corpus_texts)
        self.index = build_index(self.encoder, codes_of(self.corpus, self.mean_code), self.device)

    def search(self, encoded: Encoded, *, threshold: float, min_pairs: int = 1, limit: int):
        return self.index.search(codes_of(encoded, self.mean_code), threshold=threshold, min_pairs=min_pairs, limit=limit)

    def rank(self, encoded: Encoded, k: int) -> list[list[int]]:
        return [[m.id for m in row] for row in self.search(encoded, threshold=math.inf, limit=k)]

    def returned_sets(self, encoded: Encoded, threshold: float, min_pairs: int) -> list[list[int]]:
        """Per query, every stored question the rule returns at this threshold (no limit)."""
        return [
            [m.id for m in row]
            for row in self.search(encoded, threshold=threshold, min_pairs=min_pairs, limit=len(self.corpus.mean))
        ]
