"""The feedback table: one verdict of an agent on one (customer question, stored question) pair.

The stored question's text is copied in at the time of the verdict (`stored_text`), so the pair
stays usable for calibration after the stored question is edited or deleted.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import SQLITE_NEVER_REUSE_IDS, Base, Identifier, UTCDateTime
from app.questions.models import utcnow


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = SQLITE_NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Identifier, primary_key=True, autoincrement=True)
    question: Mapped[str] = mapped_column(Text, nullable=False)
    question_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    stored_text: Mapped[str] = mapped_column(Text, nullable=False)
    duplicate: Mapped[bool] = mapped_column(Boolean, nullable=False)
    source: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
