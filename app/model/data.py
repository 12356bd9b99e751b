"""Reading question corpora (CSV or JSON lines) for training, evaluation and import."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.model.text import EmptyTextError, normalize


class CorpusError(ValueError):
    """A corpus file that cannot be read as asked; the message names the file, row and column."""


@dataclass
class Corpus:
    texts: list[str]
    labels: list[str | None] | None = None  # None for a row without one (an empty cell, JSON null)
    extra: dict[str, list[Any]] = field(default_factory=dict)  # as the file holds them (CSV: text)
    sha256: str = ""
    path: str = ""
    text_column: str = ""
    label_column: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows, path: str) -> Corpus:
        """These rows as a corpus of their own (the same file's hash and columns), named `path`."""
        return Corpus(
            [self.texts[i] for i in rows], None if self.labels is None else [self.labels[i] for i in rows],
            sha256=self.sha256, path=path, text_column=self.text_column, label_column=self.label_column,
        )


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line/row number, record) pairs from a CSV file with a header or a JSON-lines file."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark, as Excel writes, is not text
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise CorpusError(f"{path}: line {number} is not a JSON object")
                yield number, record
    else:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise CorpusError(f"{path}: no header row")
            for number, record in enumerate(reader, start=2):
                extra = record.pop(None, None)  # fields beyond the header's (DictReader's restkey)
                if extra and any(value.strip() for value in extra):
                    raise CorpusError(
                        f"{path}: row {number} has {len(reader.fieldnames) + len(extra)} fields, the header "
                        f"{len(reader.fieldnames)}: a comma inside an unquoted text? (quote such fields: \"a, b\")"
                    )
                yield number, record


def _visible(text: str) -> bool:
    try:
        normalize(text)
    except EmptyTextError:
        return False
    return True


def _label(value: Any) -> str | None:
    """A label cell as a category name; an empty cell, a missing CSV field or JSON null is no label
    (not a category of unlabelled questions)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def labelled_rows(labels: list[str | None]) -> list[int]:
    """The rows that carry a label."""
    return [i for i, label in enumerate(labels) if label is not None]


def _not_a_file(path: Path) -> str:
    return "is a directory, not a file" if path.is_dir() else "does not exist"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_corpus(
    path: Path | str,
    text_column: str,
    label_column: str | None = None,
    extra_columns: tuple[str, ...] = (),
) -> Corpus:
    """Reads every row; a missing column or an empty text is an error naming the row."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} {_not_a_file(path)}")
    texts: list[str] = []
    labels: list[str] | None = [] if label_column else None
    extra: dict[str, list[Any]] = {column: [] for column in extra_columns}
    columns: set[str] = set()
    try:
        for number, record in _rows(path):
            columns.update(record)
            missing = [c for c in (text_column, label_column) if c and c not in record]
            if missing:
                raise CorpusError(
                    f"{path}: row {number} has no column {missing[0]!r} (columns: {', '.join(map(str, record))})"
                )
            text = record[text_column]
            if text is not None and not isinstance(text, str):
                raise CorpusError(f"{path}: row {number}: {text_column!r} must be text, got {json.dumps(text)[:40]}")
            if not text or not _visible(text):
                raise CorpusError(f"{path}: row {number} has an empty {text_column!r}"
                                  + (" (only invisible characters)" if text and text.strip() else ""))
            texts.append(text)
            if labels is not None:
                labels.append(_label(record[label_column]))
            for column in extra_columns:
                value = record.get(column)
                extra[column].append(None if value is None or value == "" else value)
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not texts:
        raise CorpusError(f"{path}: no rows")
    absent = [column for column in extra_columns if column not in columns]
    if absent:  # a misspelt --external-id-column would otherwise import every row without one
        raise CorpusError(f"{path}: no row has a column {absent[0]!r} (columns: {', '.join(sorted(map(str, columns)))})")
    return Corpus(
        texts, labels, extra, sha256=file_sha256(path), path=str(path), text_column=text_column, label_column=label_column
    )


def bundled_transfer_file() -> Path | None:
    """The general question corpus shipped with qsim (data/questions/transfer.txt: 40,000 questions
    and requests from public sources, data/questions/SOURCES.md), when this installation has it."""
    from app.core.config import PROJECT_ROOT

    path = PROJECT_ROOT / "data" / "questions" / "transfer.txt"
    return path if path.is_file() else None


def read_lines(path: Path | str) -> list[str]:
    """Questions from a text file, one per line; blank lines (and lines of invisible characters
    only, which normalise to nothing) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"question file {path} {_not_a_file(path)}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    texts = [line for line in lines if line and _visible(line)]
    if not texts:
        raise CorpusError(f"{path}: no questions")
    return texts


@dataclass
class PairsCorpus:
    """Labelled question pairs: left[i] and right[i] are duplicates (mean the same) when duplicate[i]."""

    left: list[str]
    right: list[str]
    duplicate: list[bool]
    sha256: str = ""
    path: str = ""
    columns: tuple[str, str, str] = ("", "", "")

    def __len__(self) -> int:
        return len(self.left)


_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def read_pairs(path: Path | str, columns: tuple[str, str, str] | None = None) -> PairsCorpus:
    """A CSV (with header) or JSON-lines file of two text columns and a 0/1 duplicate label.
    `columns` names them (first text, second text, label); by default the file's first three."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"pairs file {path} {_not_a_file(path)}")
    left: list[str] = []
    right: list[str] = []
    duplicate: list[bool] = []
    try:
        for number, record in _rows(path):
            if columns is None:
                if len(record) < 3:
                    raise CorpusError(f"{path}: needs two text columns and a 0/1 label; found {', '.join(map(str, record))}")
                columns = tuple(list(record)[:3])
            missing = [c for c in columns if c not in record]
            if missing:
                raise CorpusError(
                    f"{path}: row {number} has no column {missing[0]!r} (columns: {', '.join(map(str, record))})"
                )
            first, second, label = (record[c] for c in columns)
            for column, text in zip(columns[:2], (first, second), strict=True):
                if not isinstance(text, str) or not _visible(text):
                    raise CorpusError(
                        f"{path}: row {number} has an empty {column!r}"
                        + (" (only invisible characters)" if isinstance(text, str) and text.strip() else "")
                    )
            flag = str(label).strip().lower()
            if flag not in _TRUE | _FALSE:
                raise CorpusError(f"{path}: row {number} has {columns[2]!r} = {label!r}; expected 0 or 1")
            left.append(first)
            right.append(second)
            duplicate.append(flag in _TRUE)
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not left:
        raise CorpusError(f"{path}: no rows")
    return PairsCorpus(left, right, duplicate, sha256=file_sha256(path), path=str(path), columns=columns)
