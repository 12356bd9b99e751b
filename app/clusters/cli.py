"""`qsim cluster`: the duplicate clusters of the stored questions, offline, as a CSV."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli import CommandError, command, positive_int


def _filter(value: str) -> tuple[str, object]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)  # numbers, true/false, "quoted strings"
    except json.JSONDecodeError:
        parsed = raw
    return key, parsed


def _distance(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be a distance of 0 or more, got {text}")
    return value


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Cluster the questions of the database (QSIM_DATABASE_URL) into duplicates by the service's own rule, "
        "as POST /admin/clusters does: leader clustering of the similarity graph (most-matched questions lead; "
        "every member matches its representative). Uses the saved index when it is current, else builds one."
    )
    p.add_argument("--out", type=Path, required=True, help="CSV: cluster, size, representative_id, id, text")
    p.add_argument("--threshold", type=_distance, help="pair distance threshold (default: the model's calibrated one)")
    p.add_argument("--min-pairs", type=positive_int, help="pairs within the threshold to join two questions (default: the model's)")
    p.add_argument("--filter", type=_filter, action="append", default=[], metavar="KEY=VALUE",
                   help="only questions whose metadata has KEY equal to VALUE (repeat for several; JSON values)")
    p.add_argument("--include-singletons", action="store_true", help="also write questions that match no other")


@command("cluster", "group the stored questions into duplicate clusters (CSV)", _cluster_args)
def _cluster(args: argparse.Namespace) -> int:
    from app.clusters.service import cluster_state, write_clusters_csv
    from app.core.config import get_settings
    from app.core.db import migrated_database
    from app.similarity.applier import ChangeApplier
    from app.similarity.search_service import InvalidQuery

    settings = get_settings()
    with migrated_database(settings.database_url, settings.database_timeout_seconds) as database:
        applier, active = ChangeApplier.for_tools(database, settings)
        state = applier.load_now(applier.builder.load_encoder(active.path), active.generation)
        try:
            result = cluster_state(state, args.threshold, args.min_pairs, dict(args.filter) or None)
        except InvalidQuery as error:
            raise CommandError(str(error)) from None
        rows = write_clusters_csv(result, args.out, args.include_singletons, state)
    print(
        f"{result['questions']} questions: {len(result['clusters'])} clusters of 2 or more, {result['singletons']} "
        f"singletons (threshold {result['threshold']:.4g}, min_pairs {result['min_pairs']}); {rows} rows -> {args.out}"
    )
    return 0
