"""Bulk loading of questions from a CSV or JSON-lines file (`qsim import`, and the bundled corpus
that fills an empty development database).

Rows with an external id already stored update that question instead of duplicating it, so a
re-import of the same file changes nothing. Each batch is one transaction with its change-log
entries; a running service picks the changes up from the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.core.db import Database
from app.model.data import CorpusError, read_corpus
from app.questions import repository
from app.questions.repository import NewQuestion
from app.questions.schemas import QuestionCreate, check_metadata


class ImportFileError(CorpusError):
    """A file that cannot be imported as asked; nothing was written."""


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def read_questions(
    path: Path,
    text_column: str,
    external_id_column: str | None = None,
    answer_column: str | None = None,
    metadata_columns: Sequence[str] = (),
    max_question_chars: int | None = None,
) -> list[NewQuestion]:
    """The file's rows as questions, each held to what the API accepts (external id length, NUL
    characters, answer length, metadata, and with `max_question_chars` the text's length): a row the
    API would refuse is refused here, naming it, before anything is written."""
    extra = tuple(c for c in (external_id_column, answer_column, *metadata_columns) if c)
    corpus = read_corpus(path, text_column, extra_columns=extra)
    seen: dict[str, int] = {}
    questions = []
    for row, text in enumerate(corpus.texts):
        external_id = _text(path, corpus, external_id_column, row)
        if external_id is not None:
            if external_id in seen:
                raise ImportFileError(
                    f"{path}: external id {external_id!r} appears in data rows {seen[external_id] + 1} and {row + 1}"
                )
            seen[external_id] = row
        meta = {c: _scalar(path, corpus, c, row) for c in metadata_columns if corpus.extra[c][row] is not None} or None
        try:
            check_metadata(meta)  # what the API keeps to: finite numbers, storable text, a size limit
        except ValueError as error:
            raise ImportFileError(f"{path}: data row {row + 1}: metadata {error}") from None
        answer = _text(path, corpus, answer_column, row)
        _check_as_the_api_does(path, row, text, external_id, answer, max_question_chars)
        questions.append(NewQuestion(text=text, external_id=external_id, answer=answer, meta=meta))
    return questions


def _check_as_the_api_does(
    path: Path, row: int, text: str, external_id: str | None, answer: str | None, max_question_chars: int | None
) -> None:
    try:
        QuestionCreate.model_validate({"text": text, "external_id": external_id, "answer": answer})
    except ValidationError as error:
        problem = error.errors()[0]
        field = "text" if problem["loc"][0] == "text" else str(problem["loc"][0])
        raise ImportFileError(
            f"{path}: data row {row + 1}: {field} {problem['msg'].removeprefix('Value error, ')}"
        ) from None
    if max_question_chars is not None and len(text) > max_question_chars:
        raise ImportFileError(
            f"{path}: data row {row + 1}: text has {len(text)} characters; the service takes at most "
            f"{max_question_chars} (QSIM_MAX_QUESTION_CHARS)"
        )


def _text(path: Path, corpus, column: str | None, row: int) -> str | None:
    """A text column's value: a JSON number is written as text (an id 42 is "42")."""
    value = corpus.extra[column][row] if column else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ImportFileError(f"{path}: data row {row + 1}: {column!r} must be text, got {json.dumps(value)}")


def _scalar(path: Path, corpus, column: str, row: int) -> str | int | float | bool:
    """A metadata column's value as the file holds it: CSV text, or a JSON string, number or
    true/false (filters match it by type: true is not "True")."""
    value = corpus.extra[column][row]
    if isinstance(value, str | int | float | bool):
        return value
    raise ImportFileError(
        f"{path}: data row {row + 1}: metadata column {column!r} holds {json.dumps(value)[:60]}; "
        "a metadata column takes text, a number or true/false"
    )


def import_questions(
    database: Database,
    questions: Sequence[NewQuestion],
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    report = ImportReport(rows=len(questions))
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        with database.writing() as session:
            existing = repository.by_external_ids(session, [q.external_id for q in batch if q.external_id])
            fresh = [q for q in batch if q.external_id not in existing]
            repository.create(session, fresh)
            report.created += len(fresh)
            for item in batch:
                stored = existing.get(item.external_id) if item.external_id else None
                if stored is None:
                    continue
                changes = repository.changed_fields(stored, {"text": item.text, "answer": item.answer, "meta": item.meta})
                if changes:
                    repository.update_fields(session, stored, changes)
                    report.updated += 1
                else:
                    report.unchanged += 1
        if progress:
            progress(len(batch))
    return report
