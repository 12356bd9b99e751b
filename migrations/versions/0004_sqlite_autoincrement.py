"""SQLite never reuses an id: questions, the change log and feedback get AUTOINCREMENT.

Without it SQLite hands the highest id back out once its row is deleted, so a desk that kept id
n (or a verdict recorded on it) would find another question under it. PostgreSQL's sequences
never reuse ids: nothing to do there. The tables are copied into new ones (Alembic's batch mode),
keeping their rows, constraints and indexes. Question ids deleted before this migration are still
in the change log (never pruned) and in feedback: the counter starts above every one of them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("questions", "question_changes", "feedback")


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def upgrade() -> None:
    _recreate(True)
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # The copy left the counter at the largest id present; a deleted one may be larger.
    highest = bind.execute(sa.text(
        "SELECT max(highest) FROM (SELECT max(id) AS highest FROM questions "
        "UNION ALL SELECT max(question_id) FROM question_changes UNION ALL SELECT max(question_id) FROM feedback)"
    )).scalar()
    if highest:
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'questions'"))
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('questions', :highest)"), {"highest": highest})


def downgrade() -> None:
    _recreate(False)
