"""Tables of the questions domain.

`question_changes` is the change log: every write to `questions` appends one row in the same
transaction. The index records the last change it has applied (its revision), so it can catch up
after a restart, a crash, a reindex, or writes made by another process (worker, `qsim import`).
Writers take a lock before appending, so change numbers are in commit order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import SQLITE_NEVER_REUSE_IDS, Base, Identifier, JSONDocument, UTCDateTime

CHANGE_UPSERT = "upsert"  # new question or new text: (re-)encode it
CHANGE_META = "meta"  # external id, answer or metadata changed: the codes stay
CHANGE_DELETE = "delete"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Question(Base):
    __tablename__ = "questions"
    __table_args__ = SQLITE_NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Identifier, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONDocument, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class QuestionChange(Base):
    __tablename__ = "question_changes"
    __table_args__ = SQLITE_NEVER_REUSE_IDS

    seq: Mapped[int] = mapped_column(Identifier, primary_key=True, autoincrement=True)
    question_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    op: Mapped[str] = mapped_column(String(8), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
