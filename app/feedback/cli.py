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
    from app.core.db import migrated_database
    from app.feedback.service import FeedbackService, write_pairs

    settings = get_settings()
    with migrated_database(settings.database_url, settings.database_timeout_seconds) as database:
        rows = write_pairs(FeedbackService(database).iter_pairs(), args.out)
    print(f"wrote {rows} labelled pairs to {args.out}")
    return 0
