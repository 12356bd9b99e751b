"""What the questions API does, free of HTTP: storage, change log, index sync and search.

A write commits the question and its change-log entry in one transaction, then waits until the
index has applied that change, so a question is searchable as soon as the call returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.errors import NotFoundError
from app.model.encoder import Encoded
from app.questions import repository
from app.questions.models import Question
from app.questions.repository import NewQuestion
from app.similarity.batcher import MicroBatcher
from app.similarity.engine import ModelSummary, SearchAnswer, SearchQuery, SimilarityEngine

logger = logging.getLogger(__name__)


class QuestionNotFound(NotFoundError):
    def __init__(self, question_id: int):
        super().__init__(f"question {question_id} does not exist")


class ExternalIdConflict(ValueError):
    def __init__(self, external_ids: Sequence[str]):
        shown = ", ".join(repr(e) for e in list(external_ids)[:10])
        more = f" and {len(external_ids) - 10} more" if len(external_ids) > 10 else ""
        super().__init__(f"external_id already used by another question{': ' if shown else ''}{shown}{more}")
        self.external_ids = list(external_ids)


@dataclass
class BulkOutcome:
    questions: list[Question]
    created: int
    updated: int
    skipped: int


class QuestionService:
    def __init__(
        self,
        database: Database,
        engine: SimilarityEngine,
        batcher: MicroBatcher[SearchQuery, SearchAnswer],
        search_timeout_seconds: float,
        load_wait_seconds: float = 0.0,
    ):
        self.db = database
        self.engine = engine
        self.batcher = batcher
        self.search_timeout = search_timeout_seconds
        self.load_wait = load_wait_seconds

    # ------------------------------------------------------------------ search

    async def similar_async(self, query: SearchQuery) -> SearchAnswer:
        """One question, micro-batched with whatever else is being asked right now; awaited on the
        event loop (no thread held while the batch runs)."""
        if not self.engine.loaded:
            await asyncio.to_thread(self.engine.wait_until_loaded, self.load_wait)
        return await self.batcher.submit_async(query, timeout=self.search_timeout)

    def similar_many(self, queries: Sequence[SearchQuery]) -> list[SearchAnswer]:
        """Many questions: already a batch, answered in one pass."""
        self.engine.wait_until_loaded(self.load_wait)  # returns at once when loaded
        answers = self.engine.search(queries)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def encode(self, text: str) -> tuple[ModelSummary, Encoded]:
        return self.engine.encode(text)

    # ------------------------------------------------------------------ reads

    def get(self, question_id: int) -> Question:
        with self.db.reading() as session:
            question = repository.get(session, question_id)
        if question is None:
            raise QuestionNotFound(question_id)
        return question

    def page(self, after_id: int, limit: int) -> tuple[list[Question], int]:
        with self.db.reading() as session:
            return repository.page(session, after_id, limit), repository.count(session)

    # ------------------------------------------------------------------ writes

    def _commit_and_index(self, write) -> Any:
        """Runs `write(session)` in a write transaction, then waits for the index to apply it."""
        try:
            with self.db.writing() as session:
                result = write(session)
                revision = repository.last_change(session)
        except IntegrityError as error:
            if "external_id" in str(error.orig):
                raise ExternalIdConflict([]) from None
            raise
        self.engine.sync(target=revision)
        return result

    @staticmethod
    def _check_free(session: Session, external_ids: Sequence[str | None], owner: int | None = None) -> None:
        taken = repository.by_external_ids(session, [e for e in external_ids if e is not None])
        clashes = [e for e, question in taken.items() if question.id != owner]
        if clashes:
            raise ExternalIdConflict(clashes)

    def create(self, item: NewQuestion) -> Question:
        def write(session: Session) -> Question:
            self._check_free(session, [item.external_id])
            return repository.create(session, [item])[0]

        return self._commit_and_index(write)

    def create_many(self, items: Sequence[NewQuestion], on_conflict: Literal["error", "skip", "update"]) -> BulkOutcome:
        """All or nothing: one transaction for the whole list."""

        def write(session: Session) -> BulkOutcome:
            existing = repository.by_external_ids(session, [i.external_id for i in items if i.external_id])
            if existing and on_conflict == "error":
                raise ExternalIdConflict(list(existing))
            created = iter(repository.create(session, [i for i in items if i.external_id not in existing]))
            ordered: list[Question] = []
            updated = 0
            for item in items:
                question = existing.get(item.external_id) if item.external_id else None
                if question is None:
                    ordered.append(next(created))
                    continue
                if on_conflict == "update":
                    repository.update_fields(
                        session, question, {"text": item.text, "answer": item.answer, "meta": item.meta}
                    )
                    updated += 1
                ordered.append(question)
            return BulkOutcome(ordered, len(items) - len(existing), updated, len(existing) - updated)

        return self._commit_and_index(write)

    def update(self, question_id: int, fields: dict[str, Any]) -> Question:
        def write(session: Session) -> Question:
            question = repository.get_for_update(session, question_id)
            if question is None:
                raise QuestionNotFound(question_id)
            if fields.get("external_id") is not None:
                self._check_free(session, [fields["external_id"]], owner=question_id)
            return repository.update_fields(session, question, fields)

        return self._commit_and_index(write)

    def delete(self, question_id: int) -> None:
        def write(session: Session) -> None:
            if repository.delete_by_ids(session, [question_id]) == 0:
                raise QuestionNotFound(question_id)

        self._commit_and_index(write)
