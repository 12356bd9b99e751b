"""`qsim feedback export`: the agents' verdicts as a pairs file for `qsim calibrate --pairs` and
`qsim train --pairs` (`qsim calibrate --feedback` reads them from the database directly)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli import command


def _feedback_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Work with the agents' verdicts stored through POST /feedback in the database of QSIM_DATABASE_URL.\n\n"
        "  qsim feedback export --out pairs.csv   # question,stored_question,duplicate (0/1), oldest first"
    )
    p.add_argument("action", choices=["export"], help="export: write the verdicts as a pairs CSV")
    p.add_argument("--out", type=Path, required=True, help="the CSV file to write")


@command("feedback", "export the agents' verdicts as labelled pairs", _feedback_args)
def _feedback(args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from app.core.db import open_database
    from app.core.migrations import check_schema
    from app.feedback.service import FeedbackService, write_pairs

    settings = get_settings()
    database = open_database(settings.database_url, settings.database_timeout_seconds)
    try:
        check_schema(database.engine)
        rows = write_pairs(FeedbackService(database).iter_pairs(), args.out)
    finally:
        database.dispose()
    print(f"wrote {rows} labelled pairs to {args.out}")
    return 0
