"""What the questions API does, free of HTTP: storage and the change log; searches are the
search service's.

A write commits the question and its change-log entry in one transaction, then waits until the
change applier (of every live worker) has applied that change, so a question is searchable as soon
as the call returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import Database
from app.core.errors import ConflictError, NotFoundError
from app.model.encoder import Encoded
from app.questions import repository
from app.questions.models import Question
from app.questions.repository import NewQuestion
from app.similarity.applier import ChangeApplier
from app.similarity.search_service import ModelSummary, SearchAnswer, SearchQuery, SearchService

logger = logging.getLogger(__name__)


class QuestionNotFound(NotFoundError):
    def __init__(self, question_id: int):
        super().__init__(f"question {question_id} does not exist")


class ExternalIdNotFound(NotFoundError):
    def __init__(self, external_id: str):
        super().__init__(f"no question has external_id {external_id!r}")


class ExternalIdConflict(ConflictError, ValueError):
    """external ids already used by other questions; `question_ids` are those questions' ids (in the
    same order), unknown (empty) when a concurrent writer took the id first. The 409 names them (and
    `id`, the existing question, when one external id clashed)."""

    def __init__(self, external_ids: Sequence[str], question_ids: Sequence[int] = ()):
        shown = ", ".join(repr(e) for e in list(external_ids)[:10])
        more = f" and {len(external_ids) - 10} more" if len(external_ids) > 10 else ""
        owners = ""
        if len(question_ids) == 1:
            owners = f" (question {question_ids[0]})"
        super().__init__(f"external_id already used by another question{': ' if shown else ''}{shown}{owners}{more}")
        self.external_ids = list(external_ids)
        self.question_ids = list(question_ids)

    def extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"external_ids": self.external_ids}
        if self.question_ids:
            extra["question_ids"] = self.question_ids
        if len(self.question_ids) == 1:
            extra["id"] = self.question_ids[0]
        return extra


@dataclass
class PutOutcome:
    question: Question
    created: bool
    changed: bool


@dataclass
class BulkOutcome:
    questions: list[Question]
    created: int
    updated: int
    skipped: int


class QuestionService:
    def __init__(self, database: Database, applier: ChangeApplier, searches: SearchService):
        self.db = database
        self.applier = applier
        self.searches = searches

    # ------------------------------------------------------------------ search (the search service's)

    async def similar_async(self, query: SearchQuery) -> SearchAnswer:
        return await self.searches.similar_async(query)

    async def similar_many_async(self, queries: Sequence[SearchQuery]) -> list[SearchAnswer]:
        return await self.searches.similar_many_async(queries)

    async def encode_async(self, text: str) -> tuple[ModelSummary, Encoded]:
        return await self.searches.encode_async(text)

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
        """Runs `write(session)` in a write transaction, then waits until the index of every live
        worker has applied it (the change applier does the applying)."""
        try:
            with self.db.writing() as session:
                result = write(session)
                revision = repository.last_change(session)
        except IntegrityError as error:
            if "external_id" in str(error.orig):
                raise ExternalIdConflict([]) from None
            raise
        self.applier.wait_visible(revision)
        return result

    @staticmethod
    def _check_free(session: Session, external_ids: Sequence[str | None], owner: int | None = None) -> None:
        taken = repository.by_external_ids(session, [e for e in external_ids if e is not None])
        clashes = [(e, question.id) for e, question in taken.items() if question.id != owner]
        if clashes:
            raise ExternalIdConflict([e for e, _ in clashes], [qid for _, qid in clashes])

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
                raise ExternalIdConflict(list(existing), [q.id for q in existing.values()])
            created = iter(repository.create(session, [i for i in items if i.external_id not in existing]))
            ordered: list[Question] = []
            updated = 0
            for item in items:
                question = existing.get(item.external_id) if item.external_id else None
                if question is None:
                    ordered.append(next(created))
                    continue
                if on_conflict == "update":
                    changed = repository.changed_fields(
                        question, {"text": item.text, "answer": item.answer, "meta": item.meta}
                    )
                    if changed:  # a replay changes nothing: no new updated_at, no change logged
                        repository.update_fields(session, question, changed)
                        updated += 1
                ordered.append(question)
            return BulkOutcome(ordered, len(items) - len(existing), updated, len(existing) - updated)

        return self._commit_and_index(write)

    def update(self, question_id: int, fields: dict[str, Any]) -> Question:
        """Changes the fields given; fields equal to what is stored change nothing, and a call that
        changes nothing (an empty PATCH) writes nothing: no new updated_at, no change logged."""
        if not fields:
            return self.get(question_id)

        def write(session: Session) -> Question:
            question = repository.get_for_update(session, question_id)
            if question is None:
                raise QuestionNotFound(question_id)
            changed = repository.changed_fields(question, fields)
            if not changed:
                return question
            if changed.get("external_id") is not None:
                self._check_free(session, [changed["external_id"]], owner=question_id)
            return repository.update_fields(session, question, changed)

        return self._commit_and_index(write)

    def get_by_external_id(self, external_id: str) -> Question:
        with self.db.reading() as session:
            question = repository.by_external_ids(session, [external_id]).get(external_id)
        if question is None:
            raise ExternalIdNotFound(external_id)
        return question

    def put_by_external_id(self, item: NewQuestion) -> PutOutcome:
        """Creates the question with this external id, or makes the stored one equal to `item`
        (text, answer and metadata; absent ones become null). Replaying the same item returns the
        same question and writes nothing."""
        assert item.external_id is not None

        def write(session: Session) -> PutOutcome:
            question = repository.by_external_ids(session, [item.external_id]).get(item.external_id)
            if question is None:
                return PutOutcome(repository.create(session, [item])[0], created=True, changed=True)
            wanted = {"text": item.text, "answer": item.answer, "meta": item.meta}
            changed = repository.changed_fields(question, wanted)
            if changed:
                repository.update_fields(session, question, changed)
            return PutOutcome(question, created=False, changed=bool(changed))

        return self._commit_and_index(write)

    def delete(self, question_id: int) -> None:
        def write(session: Session) -> None:
            if repository.delete_by_ids(session, [question_id]) == 0:
                raise QuestionNotFound(question_id)

        self._commit_and_index(write)
