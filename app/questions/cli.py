"""`qsim import`: bulk-load questions into the database."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli import command, positive_int


def _import_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Load questions from a CSV (with header) or JSON-lines file into the database configured by "
        "QSIM_DATABASE_URL. Rows whose external id is already stored update that question, so importing "
        "the same file again duplicates nothing. A running service picks the new questions up by itself. "
        "A database without qsim's tables is migrated first (as `qsim serve` does)."
    )
    p.add_argument("--file", type=Path, required=True, help="CSV file with a header, or JSON lines (.jsonl)")
    p.add_argument("--text-column", required=True, help="column holding the question text")
    p.add_argument("--external-id-column", help="column holding the desk's own id (needed to re-import safely)")
    p.add_argument("--answer-column", help="column holding the answer, stored with the question")
    p.add_argument("--metadata-column", action="append", default=[], dest="metadata_columns",
                   help="column stored in the question's metadata (repeat for several)")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="questions per transaction")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("import", "load questions from a file into the database", _import_args)
def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.core.config import get_settings
    from app.core.db import open_database
    from app.core.migrations import upgrade_to_head
    from app.questions.importer import import_questions, read_questions

    settings = get_settings()
    questions = read_questions(
        args.file, args.text_column, args.external_id_column, args.answer_column, args.metadata_columns,
        max_question_chars=settings.max_question_chars,
    )
    if not args.external_id_column:
        print("note: without --external-id-column, importing this file again would add its questions again")
    database = open_database(settings.database_url, settings.database_timeout_seconds)
    try:
        upgrade_to_head(settings.database_url)
        with tqdm(total=len(questions), unit="q", disable=args.no_progress) as bar:
            report = import_questions(database, questions, args.batch_size, progress=bar.update)
    finally:
        database.dispose()
    print(f"{report.rows} rows: {report.created} created, {report.updated} updated, {report.unchanged} unchanged")
    return 0
