"""SQL for questions and their change log. Every function takes the caller's session; write
functions must run inside `Database.writing()` so the change log stays in commit order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select
from sqlalchemy.orm import Session

from app.core.db import json_text
from app.questions.models import CHANGE_DELETE, CHANGE_META, CHANGE_UPSERT, Question, QuestionChange, utcnow


@dataclass(frozen=True)
class NewQuestion:
    text: str
    external_id: str | None = None
    answer: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class Change:
    seq: int
    question_id: int
    op: str


def log_changes(session: Session, question_ids: Iterable[int], op: str) -> None:
    rows = [{"question_id": qid, "op": op, "created_at": utcnow()} for qid in question_ids]
    if rows:
        session.execute(insert(QuestionChange), rows)


def create(session: Session, items: Sequence[NewQuestion]) -> list[Question]:
    now = utcnow()
    questions = [
        Question(text=i.text, external_id=i.external_id, answer=i.answer, meta=i.meta, created_at=now, updated_at=now)
        for i in items
    ]
    session.add_all(questions)
    session.flush()
    log_changes(session, (q.id for q in questions), CHANGE_UPSERT)
    return questions


def _differs(stored: Any, given: Any) -> bool:
    if isinstance(stored, dict | list) or isinstance(given, dict | list):
        return json_text(stored) != json_text(given)
    return stored != given


def changed_fields(question: Question, wanted: dict[str, Any]) -> dict[str, Any]:
    """The fields of `wanted` whose value would change `question`: metadata compared as JSON
    documents (true is not 1, 1 == 1.0), the rest by value."""
    return {name: value for name, value in wanted.items() if _differs(getattr(question, name), value)}


def update_fields(session: Session, question: Question, fields: dict[str, Any]) -> Question:
    """Applies `fields` (text, external_id, answer, meta) and logs the change: `upsert` when the
    text changed (it must be re-encoded), `meta` otherwise."""
    text_changed = "text" in fields and fields["text"] != question.text
    for name, value in fields.items():
        setattr(question, name, value)
    question.updated_at = utcnow()
    session.flush()
    log_changes(session, [question.id], CHANGE_UPSERT if text_changed else CHANGE_META)
    return question


def delete_by_ids(session: Session, ids: Sequence[int]) -> int:
    removed = session.execute(delete(Question).where(Question.id.in_(ids)).returning(Question.id)).scalars().all()
    log_changes(session, removed, CHANGE_DELETE)
    return len(removed)


def get(session: Session, question_id: int) -> Question | None:
    return session.get(Question, question_id)


def get_for_update(session: Session, question_id: int) -> Question | None:
    return session.execute(select(Question).where(Question.id == question_id).with_for_update()).scalar_one_or_none()


def by_external_ids(session: Session, external_ids: Sequence[str]) -> dict[str, Question]:
    if not external_ids:
        return {}
    rows = session.execute(select(Question).where(Question.external_id.in_(external_ids))).scalars()
    return {q.external_id: q for q in rows}


def page(session: Session, after_id: int, limit: int) -> list[Question]:
    return list(
        session.execute(select(Question).where(Question.id > after_id).order_by(Question.id).limit(limit)).scalars()
    )


def count(session: Session) -> int:
    return session.execute(select(func.count()).select_from(Question)).scalar_one()


def summaries(session: Session, ids: Sequence[int]) -> dict[int, tuple[str, str | None, str | None, Any]]:
    """id -> (text, external_id, answer, metadata) for the ids that still exist."""
    result: dict[int, tuple[str, str | None, str | None, Any]] = {}
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start : start + 1000])
        rows = session.execute(
            select(Question.id, Question.text, Question.external_id, Question.answer, Question.meta).where(
                Question.id.in_(chunk)
            )
        )
        result.update({row.id: (row.text, row.external_id, row.answer, row.meta) for row in rows})
    return result


def iter_summaries(
    session: Session, batch_size: int = 5000, after_id: int = 0
) -> Iterator[Sequence[Row[tuple[int, str, str | None, str | None, Any]]]]:
    """Questions with id > after_id as batches of rows (id, text, external_id, answer, metadata), in id
    order (keyset pagination: no offset scans)."""
    after = after_id
    while True:
        rows = session.execute(
            select(Question.id, Question.text, Question.external_id, Question.answer, Question.meta)
            .where(Question.id > after)
            .order_by(Question.id)
            .limit(batch_size)
        ).all()
        if not rows:
            return
        yield rows  # rows unpack like tuples: copying them into tuples was a third of the catalog read at start-up
        after = rows[-1][0]


def all_ids(session: Session) -> list[int]:
    return list(session.execute(select(Question.id).order_by(Question.id)).scalars())


def last_change(session: Session | Connection) -> int:
    return session.execute(select(func.coalesce(func.max(QuestionChange.seq), 0))).scalar_one()


def changes_after(session: Session, seq: int, limit: int) -> list[Change]:
    rows = session.execute(
        select(QuestionChange.seq, QuestionChange.question_id, QuestionChange.op)
        .where(QuestionChange.seq > seq)
        .order_by(QuestionChange.seq)
        .limit(limit)
    ).all()
    return [Change(r.seq, r.question_id, r.op) for r in rows]
