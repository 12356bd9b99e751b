"""Devices and k-NN backends: FAISS on the GPU when it sees one, and a CPU twin for tests.

GPU FAISS indexes have no range search, select at most 2048 neighbours, cannot remove vectors or be
written to disk, and are not thread-safe. So: the host copy of every segment stays the source of
truth (and what is saved); each immutable segment gets its own GPU flat index, built once and
dropped with the segment; deletions are masks applied on the host; every GPU call holds one lock;
and the search asks for k nearest neighbours with k grown as needed, falling back to an exact host
scan past the 2048 limit (`sources.KnnSource`). `CpuFlatKnn` runs the very same strategy on the CPU
with any k limit, which is how the tests exercise it without a GPU.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

from app.search.bounds import GPU_UNIT_ROUNDOFF, FloatErrorModel
from app.search.kernels import squared_distances

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
GPU_MAX_K = 2048
# Vectors copied to the GPU per locked call when a segment is built, so that building a large
# segment (in the background) never holds the GPU away from searches for long.
GPU_ADD_CHUNK = 1 << 17


def visible_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_device(device: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda'; 'cuda' without a GPU is an error, not a fallback."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    gpus = visible_gpus()
    if device == "cuda" and gpus == 0:
        raise ValueError(
            "device 'cuda' was asked for but FAISS sees no GPU (is faiss-gpu installed, and is a GPU "
            "visible to this process?); use device 'auto' or 'cpu' to run on the CPU"
        )
    return "cuda" if device in ("auto", "cuda") and gpus > 0 else "cpu"


class CpuFlatKnn:
    """Exact float32 k-NN over a segment's samples on the CPU, with an artificial k limit. Answers
    like a GPU flat index: sorted squared distances, rows padded with -1 (and FLT_MAX) past the end."""

    def __init__(self, vectors: np.ndarray, max_k: int, errors: FloatErrorModel):
        self.vectors = vectors
        self.max_k = max_k
        self.errors = errors

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        squared = squared_distances(queries, self.vectors)
        count = min(k, squared.shape[1])
        nearest = np.argpartition(squared, count - 1, axis=1)[:, :count] if count else squared[:, :0].astype(np.int64)
        nearest = np.take_along_axis(nearest, np.argsort(np.take_along_axis(squared, nearest, 1), axis=1), 1)
        distances = np.full((len(queries), k), np.finfo(np.float32).max, dtype=np.float32)
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        distances[:, :count] = np.take_along_axis(squared, nearest, 1)
        labels[:, :count] = nearest
        return distances, labels


class GpuFlatKnn:
    """A GPU flat L2 index over a segment's samples (labels = sample rows)."""

    max_k = GPU_MAX_K

    def __init__(self, accelerator: GpuAccelerator, vectors: np.ndarray):
        self.lock = accelerator.lock
        self.errors = FloatErrorModel(vectors.shape[1], GPU_UNIT_ROUNDOFF)
        config = faiss.GpuIndexFlatConfig()
        config.device = accelerator.device_id
        with self.lock:
            self.index = faiss.GpuIndexFlatL2(accelerator.resources, vectors.shape[1], config)
        for start in range(0, len(vectors), GPU_ADD_CHUNK):
            with self.lock:
                self.index.add(np.ascontiguousarray(vectors[start : start + GPU_ADD_CHUNK]))

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.index.search(queries, k)


class GpuAccelerator:
    """One GPU: FAISS resources shared by all segments, and the lock that serialises their use."""

    def __init__(self, device_id: int = 0, temp_memory_bytes: int = 512 << 20):
        self.device_id = device_id
        self.lock = threading.Lock()
        self.resources = faiss.StandardGpuResources()
        self.resources.setTempMemory(temp_memory_bytes)

    def attach(self, segment, flat: bool) -> None:
        """Give a freshly built segment (not yet visible to readers) its GPU copies: a flat index of
        its samples when `flat` (the k-NN strategy), and a clone of its IVF structure if it has one
        (HNSW has no GPU version and stays on the host)."""
        if flat and segment.size:
            segment.accelerator = GpuFlatKnn(self, segment.flat_vectors)
        approximate = segment.approximate
        if approximate is not None and approximate.spec.kind in ("ivf", "sq8"):
            with self.lock:
                clone = faiss.index_cpu_to_gpu(self.resources, self.device_id, approximate.index)
                faiss.GpuParameterSpace().set_index_parameter(clone, "nprobe", approximate.index.nprobe)
            approximate.device_index = clone
            approximate.device_lock = self.lock
