"""Before the service starts (docker/entrypoint.sh, `qsim serve`): wait for the database, bring its
schema to the newest migration, and, outside production, fill an empty database with the bundled
questions so the first search already answers.

Run as `python -m app.prestart`.
"""

from __future__ import annotations

import logging
import sys
import time

from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings, get_settings
from app.core.db import Database, open_database
from app.core.logging import configure_logging
from app.core.migrations import upgrade_to_head
from app.questions import repository
from app.questions.importer import import_questions, read_questions

logger = logging.getLogger("app.prestart")


class DatabaseUnavailable(RuntimeError):
    pass


# What the server says when waiting cannot help: the database, the user or the password is wrong.
PERMANENT_ERRORS = ("does not exist", "password authentication failed", "no pg_hba.conf entry",
                    "unable to open database file", "authentication failed")


def _reason(error: SQLAlchemyError) -> str:
    """The driver's own first line (e.g. 'FATAL: database "desk" does not exist'), which names the
    cause; SQLAlchemy's class name alone does not."""
    original = getattr(error, "orig", None)
    lines = [line.strip() for line in str(original if original is not None else error).splitlines() if line.strip()]
    return f"{error.__class__.__name__}: {lines[0]}" if lines else error.__class__.__name__


def wait_for_database(database: Database, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    delay = 0.25
    where = database.engine.url.render_as_string(hide_password=True)
    while True:
        try:
            database.ping()
            return
        except SQLAlchemyError as error:
            reason = _reason(error)
            if any(marker in reason for marker in PERMANENT_ERRORS):
                raise DatabaseUnavailable(f"database at {where} refused the connection: {reason}") from None
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"database at {where} did not answer within {timeout_seconds:.0f} s: {reason}"
                ) from None
            logger.info("waiting for the database (%s)", reason)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def seed_if_new(settings: Settings, database: Database) -> int:
    """Imports the bundled corpus into a database that has never held a question (an emptied
    one stays empty). Never in production. Returns the number of questions imported."""
    if settings.env == "production" or not settings.seed_on_empty or settings.seed_corpus is None:
        return 0
    with database.reading() as session:
        if repository.last_change(session) > 0:
            return 0
    if not settings.seed_corpus.is_file():
        logger.warning("seed corpus %s not found; starting with an empty database", settings.seed_corpus)
        return 0
    questions = read_questions(
        settings.seed_corpus, settings.seed_text_column, metadata_columns=tuple(settings.seed_metadata_columns)
    )
    report = import_questions(database, questions)
    logger.info("filled the empty database with %d questions from %s", report.created, settings.seed_corpus)
    return report.created


def prestart(settings: Settings) -> None:
    database = open_database(settings.database_url, settings.database_timeout_seconds)
    try:
        wait_for_database(database, settings.database_wait_seconds)
        upgrade_to_head(settings.database_url)
        seed_if_new(settings, database)
    finally:
        database.dispose()


def main() -> int:
    try:
        settings = get_settings()
    except Exception as error:  # a bad QSIM_* value: one line naming it, as `qsim serve` prints
        from app.cli import describe

        print(f"qsim prestart: error: {describe(error)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        prestart(settings)
    except DatabaseUnavailable as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
