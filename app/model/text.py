"""Text normalisation shared by tokenizer training and query-time encoding."""

from __future__ import annotations

import re
import unicodedata

from app.core.errors import InvalidRequest

_WHITESPACE = re.compile(r"\s+")


class EmptyTextError(InvalidRequest):
    """Raised for empty questions: whitespace only, or only invisible format characters. A
    ValueError (inside a schema's validator pydantic makes it a 422 naming the field); reaching HTTP
    on its own, a 422 about the body."""


def _is_invisible(char: str) -> bool:
    # Cf: zero-width spaces and joiners, bidi marks, BOM, soft hyphen; Cc: control characters.
    # Neither carries meaning on its own; whitespace is handled by the regex.
    return unicodedata.category(char) in ("Cf", "Cc")


# ASCII text (most questions) needs no per-character pass: NFKC leaves it as it is, casefold is
# lower(), and its only invisible characters are the controls that are not whitespace.
_ASCII_INVISIBLE = {code: None for code in range(128) if not chr(code).isspace() and _is_invisible(chr(code))}


def normalize(text: str) -> str:
    """NFKC, case-folded, invisible format/control characters removed, whitespace collapsed.
    Raises EmptyTextError when nothing visible is left."""
    if not isinstance(text, str):
        raise TypeError(f"question must be a string, got {type(text).__name__}")
    if text.isascii():
        visible = text.lower().translate(_ASCII_INVISIBLE)
    else:
        folded = unicodedata.normalize("NFKC", text).casefold()
        visible = "".join(" " if char.isspace() else char for char in folded if char.isspace() or not _is_invisible(char))
    collapsed = _WHITESPACE.sub(" ", visible).strip()
    if not collapsed:
        raise EmptyTextError("question is empty or whitespace only (invisible characters do not count)")
    return collapsed
