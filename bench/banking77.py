"""The bundled BANKING77 questions as benchmark input, stretched to any size.

Beyond the file's own rows, copies carry a distinct suffix (" (ref 1)", " (ref 2)", ...) so every
question has its own codes and no two stored questions are the same text.
"""

from __future__ import annotations

import csv
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "banking77"


def questions(split: str, size: int | None = None) -> list[str]:
    """The question texts of `split` ("train" or "test"), repeated with suffixes up to `size`."""
    rows = [row["text"] for row in csv.DictReader((DATA / f"{split}.csv").open())]
    size = len(rows) if size is None else size
    return [rows[i % len(rows)] + ("" if i < len(rows) else f" (ref {i // len(rows)})") for i in range(size)]
