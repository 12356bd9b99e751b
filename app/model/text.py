"""Text normalisation shared by tokenizer training and query-time encoding."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


class EmptyTextError(ValueError):
    """Raised for empty or whitespace-only questions."""


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed. Raises EmptyTextError when nothing is left."""
    if not isinstance(text, str):
        raise TypeError(f"question must be a string, got {type(text).__name__}")
    folded = unicodedata.normalize("NFKC", text).casefold()
    collapsed = _WHITESPACE.sub(" ", folded).strip()
    if not collapsed:
        raise EmptyTextError("question is empty or whitespace only")
    return collapsed
