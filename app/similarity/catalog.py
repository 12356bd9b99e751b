"""The catalog: what a search answers about each indexed question (text, external id, answer,
metadata) without a database round trip, and the postings that evaluate metadata filters.

A filter `{"tenant": "acme", "category": "cards"}` keeps the questions whose metadata has each
key at the top level with an equal value: strings equal as strings, numbers as numbers (1 equals
1.0), booleans as booleans (true does not equal 1). The catalog turns it into the sorted ids that
pass, which the index takes as its `allowed` set; the index itself never sees metadata.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from app.core.errors import InvalidRequest

FilterValue = str | int | float | bool
EMPTY_IDS = np.empty(0, dtype=np.int64)


class CatalogEntry(NamedTuple):
    text: str
    external_id: str | None
    answer: str | None = None
    meta: dict[str, Any] | None = None


class InvalidFilter(InvalidRequest):
    """A filter value that is not a string, a finite number or a boolean; `key` names it (a 422
    about the request's `filter`)."""

    def __init__(self, key: str, value: Any):
        super().__init__(
            f"filter value of {key!r} must be a string, a number or a boolean, got {_json_type(value)}",
            field="filter",
        )
        self.key = key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    return type(value).__name__


def canonical(value: Any) -> tuple[str, Any] | None:
    """The posting key of a metadata value; None for values a filter cannot ask for (null,
    arrays, objects, non-finite numbers)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("n", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return ("n", int(value)) if value.is_integer() else ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


def check_filter(where: Mapping[str, Any]) -> None:
    for key, value in where.items():
        if canonical(value) is None:
            raise InvalidFilter(key, value)


class Catalog:
    """id -> CatalogEntry, with postings (key, value) -> ids for filters. One writer (the engine's
    sync), many readers; a lock keeps postings and their cached id arrays consistent."""

    def __init__(self, entries: Iterable[tuple[int, CatalogEntry]] = ()):
        self._entries: dict[int, CatalogEntry] = {}
        self._postings: dict[tuple[str, tuple[str, Any]], set[int]] = {}
        self._arrays: dict[tuple[str, tuple[str, Any]], np.ndarray] = {}
        self._lock = threading.Lock()
        self.update(entries)

    # -------------------------------------------------------------- mapping (read)

    def __getitem__(self, question_id: int) -> CatalogEntry:
        return self._entries[question_id]

    def get(self, question_id: int, default: CatalogEntry | None = None) -> CatalogEntry | None:
        return self._entries.get(question_id, default)

    def __contains__(self, question_id: object) -> bool:
        return question_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._entries))

    def keys(self) -> list[int]:
        return list(self._entries)

    def items(self) -> list[tuple[int, CatalogEntry]]:
        return list(self._entries.items())

    # -------------------------------------------------------------- writes

    def __setitem__(self, question_id: int, entry: CatalogEntry) -> None:
        self.update([(question_id, entry)])

    def update(self, entries: Iterable[tuple[int, CatalogEntry]] | Mapping[int, CatalogEntry]) -> None:
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        with self._lock:
            for question_id, entry in pairs:
                entry = entry if isinstance(entry, CatalogEntry) else CatalogEntry(*entry)
                old = self._entries.get(question_id)
                if old is not None:
                    self._unpost(question_id, old.meta)
                self._entries[question_id] = entry
                self._post(question_id, entry.meta)

    def pop(self, question_id: int, default: CatalogEntry | None = None) -> CatalogEntry | None:
        with self._lock:
            old = self._entries.pop(question_id, None)
            if old is None:
                return default
            self._unpost(question_id, old.meta)
            return old

    def _keys(self, meta: dict[str, Any] | None) -> Iterator[tuple[str, tuple[str, Any]]]:
        if isinstance(meta, dict):
            for key, value in meta.items():
                value_key = canonical(value)
                if value_key is not None:
                    yield key, value_key

    def _post(self, question_id: int, meta) -> None:
        for posting in self._keys(meta):
            self._postings.setdefault(posting, set()).add(question_id)
            self._arrays.pop(posting, None)

    def _unpost(self, question_id: int, meta) -> None:
        for posting in self._keys(meta):
            ids = self._postings.get(posting)
            if ids is not None:
                ids.discard(question_id)
                if not ids:
                    del self._postings[posting]
            self._arrays.pop(posting, None)

    # -------------------------------------------------------------- filters

    def allowed(self, where: Mapping[str, Any]) -> np.ndarray:
        """Sorted ids (int64) of the questions whose metadata passes `where` (every key equal)."""
        check_filter(where)
        with self._lock:
            arrays = [self._array((key, canonical(value))) for key, value in where.items()]
            if not arrays:
                return np.sort(np.fromiter(self._entries.keys(), dtype=np.int64, count=len(self._entries)))
        arrays.sort(key=len)
        result = arrays[0]
        for other in arrays[1:]:
            if not len(result):
                break
            result = np.intersect1d(result, other, assume_unique=True)
        return result

    def passes(self, question_id: int, where: Mapping[str, Any]) -> bool:
        """Whether the question's metadata passes `where` now (False for a question not catalogued)."""
        entry = self._entries.get(question_id)
        if entry is None:
            return False
        return {(key, canonical(value)) for key, value in where.items()} <= set(self._keys(entry.meta))

    def _array(self, posting) -> np.ndarray:
        array = self._arrays.get(posting)
        if array is None:
            ids = self._postings.get(posting)
            array = np.sort(np.fromiter(ids, dtype=np.int64, count=len(ids))) if ids else EMPTY_IDS
            array.flags.writeable = False
            self._arrays[posting] = array
        return array
