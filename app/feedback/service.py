"""Recording and reading agents' verdicts, and turning them into labelled pairs for calibration."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import func, select

from app.core.db import Database
from app.feedback.models import Feedback
from app.questions import repository
from app.questions.models import utcnow
from app.questions.service import QuestionNotFound

PAIR_COLUMNS = ("question", "stored_question", "duplicate")


class FeedbackService:
    def __init__(self, database: Database, on_record: Callable[[bool], None] | None = None):
        self.db = database
        self._on_record = on_record or (lambda duplicate: None)

    def record(self, question: str, question_id: int, duplicate: bool, source: str | None) -> Feedback:
        """Stores one verdict; QuestionNotFound when `question_id` is not a stored question."""
        with self.db.writing() as session:
            stored = repository.get(session, question_id)
            if stored is None:
                raise QuestionNotFound(question_id)
            item = Feedback(
                question=question, question_id=question_id, stored_text=stored.text, duplicate=duplicate,
                source=source, created_at=utcnow(),
            )
            session.add(item)
            session.flush()
        self._on_record(duplicate)
        return item

    def page(self, after_id: int, limit: int) -> tuple[list[Feedback], int]:
        with self.db.reading() as session:
            items = list(
                session.execute(
                    select(Feedback).where(Feedback.id > after_id).order_by(Feedback.id).limit(limit)
                ).scalars()
            )
            total = session.execute(select(func.count()).select_from(Feedback)).scalar_one()
        return items, total

    def iter_pairs(self, batch_size: int = 5000) -> Iterator[tuple[str, str, bool]]:
        """(customer question, stored question text, duplicate) for every verdict, oldest first."""
        after = 0
        while True:
            with self.db.reading() as session:
                rows = session.execute(
                    select(Feedback.id, Feedback.question, Feedback.stored_text, Feedback.duplicate)
                    .where(Feedback.id > after)
                    .order_by(Feedback.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            for row in rows:
                yield row.question, row.stored_text, bool(row.duplicate)
            after = rows[-1].id


def write_pairs(pairs: Iterator[tuple[str, str, bool]] | list[tuple[str, str, bool]], out: Path) -> int:
    """Writes the pairs format `qsim calibrate --pairs` and `qsim train --pairs` read: a CSV with the
    header question,stored_question,duplicate and a 0/1 label. Returns the number of rows."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PAIR_COLUMNS)
        for question, stored, duplicate in pairs:
            writer.writerow([question, stored, 1 if duplicate else 0])
            count += 1
    return count


def feedback_pairs_corpus(service: FeedbackService):
    """The stored verdicts as the PairsCorpus that calibration sweeps (no file in between)."""
    import hashlib

    from app.model.data import PairsCorpus

    left, right, duplicate = [], [], []
    digest = hashlib.sha256()
    for question, stored, verdict in service.iter_pairs():
        left.append(question)
        right.append(stored)
        duplicate.append(verdict)
        digest.update(f"{question}\x00{stored}\x00{int(verdict)}\n".encode())
    return PairsCorpus(left, right, duplicate, sha256=digest.hexdigest(), path="database feedback", columns=PAIR_COLUMNS)


def load_feedback_pairs(database_url: str | None = None):
    """The verdicts stored in the database (QSIM_DATABASE_URL unless given) as a PairsCorpus;
    CorpusError when there are none yet."""
    from app.core.config import get_settings
    from app.core.db import migrated_database
    from app.model.data import CorpusError

    settings = get_settings()
    with migrated_database(database_url or settings.database_url, settings.database_timeout_seconds) as database:
        corpus = feedback_pairs_corpus(FeedbackService(database))
    if not corpus.left:
        raise CorpusError("no feedback stored yet: agents' verdicts arrive through POST /feedback")
    return corpus
