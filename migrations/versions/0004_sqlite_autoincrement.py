"""SQLite never reuses an id: questions, the change log and feedback get AUTOINCREMENT.

Without it SQLite hands the highest id back out once its row is deleted, so a desk that kept id
n (or a verdict recorded on it) would find another question under it. PostgreSQL's sequences
never reuse ids: nothing to do there. The tables are copied into new ones (Alembic's batch mode),
keeping their rows, constraints and indexes; ids deleted before this migration cannot be known.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

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


def downgrade() -> None:
    _recreate(False)
