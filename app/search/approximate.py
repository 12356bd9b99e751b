"""Approximate candidate structures, chosen on purpose for very large collections.

They only *propose* questions; every proposed question is then evaluated exactly, so the distances
and pair counts in a result are exact, but a match the structure did not propose is missed (recall
below 1, measured by the benchmark). Segments smaller than `min_questions` are searched exactly.

- ivf:  IndexIVFFlat over the search-space samples, `nprobe` of `nlist` lists read per query sample.
- hnsw: IndexHNSWFlat (graph with `hnsw_m` links per node, `ef_search` candidates kept while searching).
- sq8:  IndexIVFScalarQuantizer, 8 bits per component: the IVF lists hold a quarter of the bytes
        (this matters for GPU memory; the host keeps the float32 codes for exact evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from app.search.kernels import single_threaded_faiss

KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw", "sq8")
APPROXIMATE_KINDS: tuple[str, ...] = ("ivf", "hnsw", "sq8")
# Largest k a kNN search is grown to when an approximate structure is asked for a radius (the GPU
# selection limit, used on CPU too so both answer alike).
APPROXIMATE_MAX_K = 2048
# A squared radius at or above this holds every sample and takes the ranking path, as inf does
# (FAISS takes the radius as a C float: a larger one is refused).
FAISS_MAX_RADIUS = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ApproximateSpec:
    kind: str
    nlist: int | None = None  # None: about sqrt(samples) lists
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 128
    min_questions: int = 20_000
    train_points_per_list: int = 64
    seed: int = 1234

    def __post_init__(self):
        if self.kind not in APPROXIMATE_KINDS:
            raise ValueError(f"unknown approximate kind {self.kind!r}; choose one of {', '.join(APPROXIMATE_KINDS)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "min_questions", "train_points_per_list"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be at least 1, got {self.nlist}")

    def applies_to(self, questions: int) -> bool:
        return questions >= self.min_questions

    def lists_for(self, samples: int) -> int:
        wanted = self.nlist if self.nlist is not None else int(math.sqrt(samples))
        # FAISS wants ~39 training points per list at least.
        return max(1, min(wanted, samples // 39))

    def build(self, vectors: np.ndarray) -> ApproximateIndex:
        """vectors (s, D) float32 search space -> a trained, filled CPU index (labels = sample rows)."""
        samples, dim = vectors.shape
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            nlist = self.lists_for(samples)
            quantizer = faiss.IndexFlatL2(dim)
            if self.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
            else:
                index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit)
            index.cp.max_points_per_centroid = self.train_points_per_list
            index.cp.seed = self.seed
            index.cp.niter = 10
            index.train(vectors)
            index.nprobe = min(self.nprobe, nlist)
        index.add(vectors)
        return ApproximateIndex(self, index)


class ApproximateIndex:
    """A filled FAISS approximate index over one segment's samples, read-only after construction."""

    def __init__(self, spec: ApproximateSpec, index: faiss.Index):
        self.spec = spec
        self.index = index
        self.device_index = None  # GPU clone, attached by the accelerator
        self.device_lock = None

    def candidate_samples(self, queries: np.ndarray, squared_radius: float, ranking_k: int) -> np.ndarray:
        """queries (m, D) float32 search space -> sample rows (int64, possibly repeated) proposed as
        within `squared_radius` (math.inf: the `ranking_k` nearest samples of each query)."""
        with single_threaded_faiss():
            return self._candidate_samples(queries, squared_radius, ranking_k)

    def _candidate_samples(self, queries: np.ndarray, squared_radius: float, ranking_k: int) -> np.ndarray:
        if squared_radius >= FAISS_MAX_RADIUS:  # every sample is within it (FAISS takes a C float)
            _, labels = self._knn(queries, min(ranking_k, self.index.ntotal))
            return labels[labels >= 0]
        if self.device_index is None and self.spec.kind != "hnsw":
            _, _, labels = self.index.range_search(queries, float(squared_radius))
            return labels
        # No range search on GPU (nor a useful one on HNSW): grow k until every query's k-th
        # neighbour is beyond the radius, up to the GPU selection limit.
        k = min(64, self.index.ntotal)
        while True:
            distances, labels = self._knn(queries, k)
            if k >= min(APPROXIMATE_MAX_K, self.index.ntotal) or (distances[:, -1] > squared_radius).all():
                return labels[(labels >= 0) & (distances <= squared_radius)]
            k = min(4 * k, APPROXIMATE_MAX_K, self.index.ntotal)

    def _knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.device_index is not None:
            with self.device_lock:
                return self.device_index.search(queries, k)
        if self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.spec.ef_search, k)
            return self.index.search(queries, k, params=params)
        return self.index.search(queries, k)

    def nbytes(self) -> int:
        n, dim = self.index.ntotal, self.index.d
        if self.spec.kind == "hnsw":
            return n * dim * 4 + n * self.spec.hnsw_m * 2 * 4
        per_vector = dim if self.spec.kind == "sq8" else dim * 4
        return n * (per_vector + 8) + self.index.nlist * dim * 4

    def serialize(self) -> np.ndarray:
        return faiss.serialize_index(self.index)

    @classmethod
    def deserialize(cls, spec: ApproximateSpec, data: np.ndarray) -> ApproximateIndex:
        index = faiss.deserialize_index(data)
        if spec.kind == "hnsw":
            index.hnsw.efSearch = spec.ef_search
        else:
            index.nprobe = min(spec.nprobe, index.nlist)
        return cls(spec, index)
