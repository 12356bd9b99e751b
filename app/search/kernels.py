"""The float32 distance kernel used to read blocks: FAISS's SIMD `fvec_L2sqr_ny` on numpy views.

It reads the stored samples in place (no copy, no index object), runs single-threaded (the
by-index kernels within `single_threaded_faiss`) (cheap for the small blocks a pruned search reads) and releases the GIL, so
concurrent searches use both cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np
from faiss import swig_ptr


def squared_distances_to(query: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """query (D,) float32, samples (m, D) float32 C-contiguous -> (m,) float32 squared L2."""
    out = np.empty(len(samples), dtype=np.float32)
    if len(samples):
        faiss.fvec_L2sqr_ny(swig_ptr(out), swig_ptr(query), swig_ptr(samples), samples.shape[1], len(samples))
    return out


# Samples per tile: every query sample reads a tile while it is in cache (512 KiB at D = 128);
# streaming a long run once per query sample instead made a full scan 40% slower.
TILE_BYTES = 1 << 19


def squared_distances(queries: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """queries (m, D) float32 C-contiguous, samples (s, D) float32 C-contiguous -> (m, s) float32."""
    out = np.empty((len(queries), len(samples)), dtype=np.float32)
    if len(samples):
        dim = samples.shape[1]
        tile = max(1, TILE_BYTES // (4 * dim))
        for start in range(0, len(samples), tile):
            chunk = samples[start : start + tile]
            for i in range(len(queries)):
                faiss.fvec_L2sqr_ny(swig_ptr(out[i, start:]), swig_ptr(queries[i]), swig_ptr(chunk), dim, len(chunk))
    return out


def _at_rows(kernel, queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(m, r) float32: kernel(queries[i], vectors[rows[j]]) by one FAISS *_by_idx call, on one
    OpenMP thread: these kernels open a parallel region over the queries (fvec_L2sqr_ny does not),
    which on a loaded 2-core machine made searches several times slower."""
    out = np.empty((len(queries), len(rows)), dtype=np.float32)
    if len(rows):
        ids = np.ascontiguousarray(np.broadcast_to(np.asarray(rows, dtype=np.int64), (len(queries), len(rows))))
        with single_threaded_faiss():
            kernel(swig_ptr(out), swig_ptr(queries), swig_ptr(vectors), swig_ptr(ids), vectors.shape[1], len(queries),
                   len(rows))
    return out


def squared_distances_at(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """queries (m, D) float32 C-contiguous, vectors (n, D) float32 C-contiguous, rows (r,) ->
    (m, r) float32 squared L2 to vectors[rows], read in place by one FAISS call (scattered rows:
    one call per run of rows, or a gathered copy, cost more)."""
    return _at_rows(faiss.fvec_L2sqr_by_idx, queries, vectors, rows)


def inner_products_at(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The same for inner products: (m, r) float32 queries[i] . vectors[rows[j]]."""
    return _at_rows(faiss.fvec_inner_products_by_idx, queries, vectors, rows)


@contextmanager
def single_threaded_faiss() -> Iterator[None]:
    """Run the FAISS calls of this block on one OpenMP thread (the setting is per calling thread).

    A search is small: OpenMP's fork/join costs more than it saves, and on a busy machine a
    parallel region waits for descheduled threads (an IVF query took 72 ms with 2 threads, 1 ms
    with one, at load 10 on 2 cores). Concurrent searches use the cores instead."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
