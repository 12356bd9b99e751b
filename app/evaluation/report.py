"""`qsim evaluate`: qsim against the baselines on a labelled corpus and query set.

The corpus questions go into the service's own index (app.search.SimilarityIndex, exact) and every
query is searched with the service's rule; a result is relevant when it has the query's label.
Writes report.json, report.md and PNG figures into the output directory.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app import __version__
from app.evaluation import plots
from app.evaluation.baselines import make_baselines
from app.evaluation.calibrate import (
    MEAN_CODE,
    any_of,
    equal_precision_comparison,
    n_of,
    sweep_labelled,
    top_equal_precision_comparison,
)
from app.evaluation.harness import RetrievalRun, run_retriever
from app.evaluation.metrics import RANK_DEPTH, ranking_metrics, set_metrics
from app.evaluation.qsim import QsimRetriever, codes_of, subset
from app.evaluation.sweep import labelled_sweeps
from app.model.artifact import METRICS_FILE
from app.model.data import Corpus
from app.model.encoder import QuestionEncoder

# The index's returned sets are checked against the sweep on as many queries as these budgets allow
# per variant: a weak model's calibrated threshold can return a thousand questions per query, and
# listing millions of matches took the index 10 minutes on BANKING77 (2 loaded cores).
INDEX_CHECK_MAX_RETURNED = 300_000
INDEX_CHECK_SECONDS = 20.0
INDEX_CHECK_BATCH = 32
# When the model has no calibrated n-of-K×K, this many pairs is shown (a stated choice).
DEFAULT_N_OF_PAIRS = 3


@dataclass
class EvaluationOptions:
    skip_baselines: Sequence[str] = ()
    n_of_pairs: int | None = None
    latency_queries: int = 200
    latency_seconds: float = 20.0
    tsne_points: int = 1000
    device: str = "auto"
    seed: int = 0
    out_of_scope: dict | None = None  # how labels were held out of the corpus (the CLI's --out-of-scope-fraction)


@dataclass
class StageTimer:
    log: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.log(f"{stage} ...")
        started = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - started, 2)
        self.log(f"{stage}: {self.seconds[stage]:.1f} s")


def _ranking_row(method: str, ranked, corpus: Corpus, queries: Corpus, run: RetrievalRun | None) -> dict:
    row = {"method": method, **ranking_metrics(ranked, corpus.labels, queries.labels).as_dict()}
    row |= run.timings() if run else {}
    return row


def _environment(device: str) -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "index_device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _n_of_pairs(encoder: QuestionEncoder, options: EvaluationOptions) -> tuple[int | None, str]:
    pairs = encoder.samples_per_question**2
    if pairs == 1:
        return None, "No n-of-K×K variant: the model has one code per question, so one pair"
    calibration = encoder.artifact.settings.search.calibration or {}
    if options.n_of_pairs is not None:
        n, why = options.n_of_pairs, "given with --n-of-pairs"
    elif encoder.default_min_pairs > 1:
        n, why = encoder.default_min_pairs, "the model's calibrated min_pairs"
    elif calibration.get("n_of_pairs"):
        n, why = calibration["n_of_pairs"], "the best n > 1 in the model's calibration"
    else:
        n, why = DEFAULT_N_OF_PAIRS, f"a stated choice ({DEFAULT_N_OF_PAIRS}; the model has no calibrated n > 1)"
    if not 1 < n <= pairs:
        raise ValueError(f"n-of-pairs must be between 2 and {pairs}, got {n}")
    return n, why


def run_evaluation(
    encoder: QuestionEncoder,
    corpus: Corpus,
    queries: Corpus,
    out_dir: Path,
    options: EvaluationOptions | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    options = options or EvaluationOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = StageTimer(log)
    started = time.perf_counter()
    environment = _environment(options.device)
    pairs = encoder.samples_per_question**2
    n_of_pairs, n_of_pairs_reason = _n_of_pairs(encoder, options)
    search = encoder.artifact.settings.search
    threshold, model_min_pairs = search.threshold, search.min_pairs
    timing = {"latency_queries": options.latency_queries, "latency_seconds": options.latency_seconds, "seed": options.seed}

    with stage("qsim: encode the corpus, index it, rank the queries, time it"):
        qsim = QsimRetriever(encoder, device=options.device)
        qsim_run = run_retriever(qsim, corpus.texts, queries.texts, k=RANK_DEPTH, **timing)
    with stage("qsim mean code: index the corpus means, rank the queries"):
        mean_code = QsimRetriever(encoder, mean_code=True, device=options.device)
        mean_code.fit(corpus.texts, encoded=qsim.corpus)
        mean_ranked = mean_code.rank(qsim_run.encoded, RANK_DEPTH)
    ranking = [
        _ranking_row(qsim.name, qsim_run.ranked, corpus, queries, qsim_run),
        _ranking_row(mean_code.name, mean_ranked, corpus, queries, None),
    ]
    baselines, skipped = make_baselines(options.skip_baselines)
    for baseline in baselines:
        with stage(f"baseline {baseline.name}"):
            run = run_retriever(baseline, corpus.texts, queries.texts, k=RANK_DEPTH, **timing)
            ranking.append(_ranking_row(baseline.name, run.ranked, corpus, queries, run))

    with stage("threshold rule: exact sweep over every (query, stored question) pair"):
        sweeps = sweep_labelled(
            encoder, corpus.texts, corpus.labels, queries.texts, queries.labels,
            sorted({1, model_min_pairs, n_of_pairs or 1}), stored=qsim.corpus, queries=qsim_run.encoded,
        )
    variant_sweeps = {MEAN_CODE: sweeps.mean, any_of(pairs): sweeps.by_min_pairs[1]}
    variant_rules = {MEAN_CODE: (mean_code, 1), any_of(pairs): (qsim, 1)}
    if n_of_pairs:
        variant_sweeps[n_of(n_of_pairs, pairs)] = sweeps.by_min_pairs[n_of_pairs]
        variant_rules[n_of(n_of_pairs, pairs)] = (qsim, n_of_pairs)
    with stage(f"threshold rule through the index at t = {threshold:.6g}"):
        rule_rows = _rule_at_threshold(variant_rules, variant_sweeps, qsim_run.encoded, corpus, queries, threshold)
    own_thresholds = _at_own_calibrated_thresholds(search.calibration, variant_sweeps)
    comparison = equal_precision_comparison(
        sweeps.mean, {k: v for k, v in variant_sweeps.items() if k != MEAN_CODE}
    )
    variant_tops = {MEAN_CODE: (sweeps.mean_top, 1), any_of(pairs): (sweeps.tops[1], 1)}
    if n_of_pairs:
        variant_tops[n_of(n_of_pairs, pairs)] = (sweeps.tops[n_of_pairs], n_of_pairs)
    with stage(f"top answers through the index at t = {threshold:.6g}, min_pairs {model_min_pairs}"):
        top_answer = _top_answers(variant_tops, sweeps.tops[model_min_pairs], qsim, qsim_run.encoded, threshold,
                                  model_min_pairs, pairs, corpus.labels, queries.labels)
    top_answer["equal_precision"] = top_equal_precision_comparison(
        sweeps.mean_top, {k: v for k, (v, _) in variant_tops.items() if k != MEAN_CODE}
    )
    ranking[0] |= _top_columns(top_answer["model_rule"])
    ranking[1] |= _top_columns(top_answer["at_model_threshold"][0])
    mean_code_finding = _mean_code_finding(comparison, top_answer["equal_precision"], ranking, any_of(pairs))

    with stage("plots"):
        figures = _plots(encoder, corpus, qsim, variant_sweeps, threshold, ranking, out_dir, options, log)

    report = {
        "qsim_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "directory": str(encoder.artifact.directory),
            "name": encoder.name,
            "model_id": encoder.model_id,
            "metric": encoder.metric,
            "latent_dim": encoder.latent_dim,
            "samples_per_question": encoder.samples_per_question,
            "threshold": threshold,
            "min_pairs": model_min_pairs,
            "calibrated": search.calibration is not None,
            "calibration_method": (search.calibration or {}).get("method"),
        },
        "data": {
            "corpus": {"path": corpus.path, "sha256": corpus.sha256, "rows": len(corpus)},
            "queries": {"path": queries.path, "sha256": queries.sha256, "rows": len(queries)},
            "text_column": corpus.text_column,
            "label_column": corpus.label_column,
            "relevant": "a stored question with the query's label",
            "out_of_scope": options.out_of_scope,
        },
        "ranking": ranking,
        "skipped_baselines": skipped,
        "threshold_rule": {
            "threshold": threshold,
            "n_of_pairs": n_of_pairs,
            "n_of_pairs_reason": n_of_pairs_reason,
            "at_model_threshold": rule_rows,
            "at_own_calibrated_threshold": own_thresholds,
        },
        "equal_precision": comparison,
        "top_answer": top_answer,
        "mean_code_finding": mean_code_finding,
        "curves": {name: sweep.curve(max_points=200) for name, sweep in variant_sweeps.items()},
        "figures": [p.name for p in figures],
        "environment": environment | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "stage_seconds": stage.seconds,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    write_report(report, out_dir)
    return report


def _rule_at_threshold(variants, sweeps, encoded_queries, corpus, queries, threshold) -> list[dict]:
    """Each variant's figures at t from the exact sweep, and whether the service's index returns the
    same sets: the index is asked query batch by query batch, in a seeded order, until every query
    is done or the budget of matches or seconds is spent; the counts are compared with a sweep of
    the queries it answered."""
    rows = []
    for name, (retriever, min_pairs) in variants.items():
        expected = sweeps[name].at(threshold)
        row = {"variant": name, "min_pairs": min_pairs, "threshold": threshold} | expected.as_dict()
        order = np.random.default_rng(0).permutation(len(queries))
        returned: list[list[int]] = []
        deadline = time.perf_counter() + INDEX_CHECK_SECONDS
        matches = 0
        for start in range(0, len(order), INDEX_CHECK_BATCH):
            if returned and (matches > INDEX_CHECK_MAX_RETURNED or time.perf_counter() > deadline):
                break
            batch = retriever.returned_sets(subset(encoded_queries, order[start : start + INDEX_CHECK_BATCH]), threshold, min_pairs)
            returned.extend(batch)
            matches += sum(map(len, batch))
        checked = order[: len(returned)]
        if len(checked) < len(queries):
            expected = labelled_sweeps(
                codes_of(subset(encoded_queries, checked), retriever.mean_code), [queries.labels[i] for i in checked],
                codes_of(retriever.corpus, retriever.mean_code), corpus.labels, retriever.encoder.metric, [min_pairs],
            )[min_pairs].at(threshold)
        measured = set_metrics(returned, corpus.labels, [queries.labels[i] for i in checked])
        row |= {
            "index_checked_queries": len(checked),
            "index_agrees": (measured.returned, measured.true_positives) == (expected.returned, expected.true_positives),
        }
        row["returned_per_query"] = row["returned"] / max(len(queries), 1)
        rows.append(row)
    return rows


def _top_columns(point: dict) -> dict:
    return {"answered_share": point["answered_share"], "precision_answered_top": point["precision"],
            "out_of_scope_no_match": point["out_of_scope_no_match"]}


def _top_answers(variants, model_sweep, qsim, encoded_queries, threshold, min_pairs, pairs, corpus_labels,
                 query_labels) -> dict:
    """The top answer each variant gives at t, from the exact sweep, and the model's rule (t,
    min_pairs) checked against the service's index: its first result per query, asked query batch by
    query batch in a seeded order until every query is done or INDEX_CHECK_SECONDS are spent."""
    rows = [{"variant": name, "min_pairs": n, "threshold": threshold} | sweep.at(threshold).as_dict()
            for name, (sweep, n) in variants.items()]
    order = np.random.default_rng(1).permutation(len(encoded_queries.mean))
    firsts: dict[int, list] = {}
    deadline = time.perf_counter() + INDEX_CHECK_SECONDS
    for start in range(0, len(order), INDEX_CHECK_BATCH):
        if firsts and time.perf_counter() > deadline:
            break
        batch = order[start : start + INDEX_CHECK_BATCH]
        for q, result in zip(batch, qsim.search(subset(encoded_queries, batch), threshold=threshold,
                                                 min_pairs=min_pairs, limit=1), strict=True):
            firsts[int(q)] = result
    checked = np.array(sorted(firsts), dtype=np.int64)
    expected = model_sweep.at(threshold, checked)
    answered = [q for q in checked if firsts[q]]
    in_scope = model_sweep.in_scope
    index_answered = sum(bool(in_scope[q]) for q in answered)
    index_right = sum(corpus_labels[firsts[q][0].id] == query_labels[q] for q in answered)
    model_rule = {"variant": n_of(min_pairs, pairs), "min_pairs": min_pairs, "threshold": threshold}
    model_rule |= model_sweep.at(threshold).as_dict()
    model_rule |= {
        "index_checked_queries": len(checked),
        "index_agrees": (index_answered, index_right, len(answered) - index_answered)
        == (expected.answered, expected.right, expected.out_of_scope_answered),
    }
    return {"model_rule": model_rule, "at_model_threshold": rows}


def _mean_code_finding(pairwise: dict, top: dict, ranking: list[dict], any_name: str) -> dict:
    """Round 1's finding, re-tested: is the single mean code at least as good as any-of-K×K, at equal
    pairwise precision (recall), at equal precision of the answered tops (answered share), and in P@1?"""
    recall = pairwise["versus_mean_code"].get(any_name, {})
    answered = top["versus_mean_code"].get(any_name, {})
    p1 = {"any_of": ranking[0]["precision_at_1"], "mean_code": ranking[1]["precision_at_1"]}
    holds = {
        "recall_at_equal_precision": recall.get("levels_with_higher_recall", 0) == 0,
        "answered_at_equal_top_precision": answered.get("levels_answering_more", 0) == 0,
        "precision_at_1": p1["mean_code"] >= p1["any_of"],
    }
    statement = (
        f"{'Holds' if all(holds.values()) else 'Does not hold everywhere'}: "
        f"{any_name} has a higher recall than the mean code at {recall.get('levels_with_higher_recall', 0)} of "
        f"{recall.get('levels_compared', 0)} precision levels (mean difference "
        f"{_signed(recall.get('mean_recall_gain'))}); it answers more queries at equal precision of the answered tops "
        f"at {answered.get('levels_answering_more', 0)} of {answered.get('levels_compared', 0)} levels (fewer at "
        f"{answered.get('levels_answering_fewer', 0)}; mean difference in answered share "
        f"{_signed(answered.get('mean_answered_gain'))}); P@1 {p1['any_of']:.3f} against the mean code's "
        f"{p1['mean_code']:.3f}."
    )
    return {"variant": any_name, "holds": holds, "precision_at_1": p1, "statement": statement}


def _signed(value) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _at_own_calibrated_thresholds(calibration: dict | None, sweeps) -> list[dict]:
    """Each variant at the threshold its calibration chose for it on held-out data, measured here."""
    if not calibration:
        return []
    rows = []
    for entry in calibration.get("variants", []):
        sweep = sweeps.get(entry["variant"])
        if sweep is None or entry.get("threshold") is None:
            continue
        rows.append({"variant": entry["variant"], "min_pairs": entry["min_pairs"], "threshold": entry["threshold"]}
                    | sweep.at(entry["threshold"]).as_dict())
    return rows


def _plots(encoder, corpus, qsim, variant_sweeps, threshold, ranking, out_dir: Path, options, log) -> list[Path]:
    figures = [
        plots.plot_ranking(ranking, out_dir / "ranking.png"),
        plots.plot_threshold_curves(
            variant_sweeps, threshold, out_dir / "threshold_curves.png",
            title=f"{encoder.name}: the rule on the queries (dot and grey line: t = {threshold:.4g})",
        ),
        plots.plot_latent_map(
            qsim.corpus.mean, corpus.labels, out_dir / "latent_map.png",
            tsne_points=options.tsne_points, seed=options.seed, log=log,
        ),
    ]
    metrics_path = encoder.artifact.directory / METRICS_FILE
    if metrics_path.is_file():
        figures.append(
            plots.plot_training_curves(json.loads(metrics_path.read_text()), out_dir / "training_curves.png", encoder.latent_dim)
        )
    else:
        log(f"no {METRICS_FILE} in the model directory: no training curves")
    return figures


# ------------------------------------------------------------------------------------------ output


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(report: dict) -> str:
    model, data, rule = report["model"], report["data"], report["threshold_rule"]
    env = report["environment"]
    pairs = model["samples_per_question"] ** 2
    lines = [
        f"# qsim evaluation: {model['name']}",
        "",
        f"Model `{model['model_id']}` ({model['metric']} distance, {model['latent_dim']}-d latent, "
        f"{model['samples_per_question']} codes per question), qsim {report['qsim_version']}, {report['created_at']}.",
        f"Corpus `{data['corpus']['path']}` ({data['corpus']['rows']} questions) indexed with the service's exact "
        f"index; queries `{data['queries']['path']}` ({data['queries']['rows']}); relevant = {data['relevant']} "
        f"(`{data['label_column']}`).",
        "",
        f"Timings are from one run in one process on {env['cpus']} CPUs ({env['torch_threads']} torch threads), "
        f"load average {env['load_average_at_start'][0]} at the start and {env['load_average_at_end'][0]} at the end: "
        "on a shared machine they are indicative, compare them only within this report.",
        "",
        "## Ranking: the top 10 by closest pair distance",
        "",
        "MAP@10: average precision over the top 10, divided by min(10, relevant questions in the corpus).",
        "",
    ]
    lines += _table(
        ["method", "P@1", "MAP@10", "hit@10", "answered at the rule", "precision of answered tops",
         "encode q/s (batch 256)", "latency p50 ms", "latency p95 ms"],
        [
            [
                r["method"], _f(r["precision_at_1"]), _f(r["map_at_10"]), _f(r["hit_at_10"]),
                _f(r.get("answered_share")), _f(r.get("precision_answered_top")),
                _f(r.get("encode_per_second"), 0), _f(r.get("latency_ms_p50"), 2), _f(r.get("latency_ms_p95"), 2),
            ]
            for r in report["ranking"]
        ],
    )
    lines.append("")
    lines.append(
        "The mean-code row reuses the encodings of the row above (its encoding is a part of that work), so it has no "
        "timing of its own. Latency: one query at a time, encode + search top 10. Answered: the share of queries "
        f"(with a right answer stored) whose first result passes the model's rule (t = {rule['threshold']:.4g}, "
        f"min_pairs {model['min_pairs']}; the mean code: one pair, the same t); precision of answered tops: the "
        "share of those first results that are right (next section). The baselines have no rule."
    )
    for note in report["skipped_baselines"]:
        lines.append(f"- baseline {note['baseline']} not run: {note['reason']}")
    lines += ["", "![ranking](ranking.png)", ""]

    calibrated = (
        f"calibrated ({model['calibration_method']})" if model["calibrated"] else "NOT calibrated (run `qsim calibrate`)"
    )
    lines += [
        f"## The threshold rule at the model's threshold t = {rule['threshold']:.6g}",
        "",
        f"The model's threshold is {calibrated}; its min_pairs is {model['min_pairs']}. Returned set: every stored "
        f"question the rule accepts, no limit. Micro precision/recall over all (query, stored question) pairs, from the "
        f"exact sweep; the last column says whether the service's index returned the same sets (counts compared on all "
        f"queries, or on a seeded sample where the sets are too large to list). "
        + (f"n-of-{pairs}: n = {rule['n_of_pairs']}, {rule['n_of_pairs_reason']}." if rule["n_of_pairs"]
           else f"{rule['n_of_pairs_reason']}."),
        "",
    ]
    lines += _table(
        ["variant", "min_pairs", "precision", "recall", "F1", "returned per query", "the index's returned sets"],
        [
            [
                r["variant"], str(r["min_pairs"]), _f(r["precision"]), _f(r["recall"]), _f(r["f1"]),
                _f(r["returned_per_query"], 1),
                f"{'agree' if r['index_agrees'] else 'DIFFER'} ({r['index_checked_queries']} queries)",
            ]
            for r in rule["at_model_threshold"]
        ],
    )
    if rule["at_own_calibrated_threshold"]:
        lines += ["", "Each variant at the threshold its own calibration chose on held-out data:", ""]
        lines += _table(
            ["variant", "threshold", "precision", "recall", "F1"],
            [
                [r["variant"], f"{r['threshold']:.5g}", _f(r["precision"]), _f(r["recall"]), _f(r["f1"])]
                for r in rule["at_own_calibrated_threshold"]
            ],
        )
    lines += ["", "![threshold curves](threshold_curves.png)", ""]
    lines += render_top_answer(report)
    lines += render_equal_precision(report["equal_precision"])
    lines += [""] + render_top_equal_precision(report["top_answer"]["equal_precision"])
    lines += ["", "## Round 1's finding: the mean code against any-of-K×K", "", report["mean_code_finding"]["statement"], ""]
    lines += ["", "## The latent space and training", "", "![latent map](latent_map.png)", ""]
    if "training_curves.png" in report["figures"]:
        lines += ["![training curves](training_curves.png)", ""]
    lines += ["## Stage timings", ""]
    lines += _table(["stage", "seconds"], [[k, _f(v, 1)] for k, v in report["stage_seconds"].items()])
    lines += ["", f"Total: {report['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def render_equal_precision(comparison: dict, heading: bool = True) -> list[str]:
    """Markdown for equal_precision_comparison(): recall of each variant at each precision level."""
    names = list(comparison["levels"][0]["recall"]) if comparison["levels"] else []
    lines = [
        "## Sampling against a single code at equal precision",
        "",
        "Largest recall each variant reaches with precision at least p (– where it never reaches p). "
        "The claim to test: sampling K codes per question raises recall over the single mean code.",
        "",
    ] if heading else []
    lines += _table(
        ["precision ≥", *names],
        [[f"{row['precision']:.3g}", *(_f(row["recall"][n]) for n in names)] for row in comparison["levels"]],
    )
    lines.append("")
    for name, verdict in comparison["versus_mean_code"].items():
        if verdict["levels_compared"]:
            lines.append(
                f"- {name}: higher recall than the mean code at {verdict['levels_with_higher_recall']} of "
                f"{verdict['levels_compared']} precision levels; mean recall difference {verdict['mean_recall_gain']:+.3f}."
            )
        else:
            lines.append(f"- {name}: no precision level both reach.")
    return lines


def render_top_answer(report: dict) -> list[str]:
    """Markdown of the top answers at the model's rule (report["top_answer"])."""
    top, model = report["top_answer"], report["model"]
    rule = top["model_rule"]
    oos = report["data"].get("out_of_scope") or {}
    lines = [
        f"## The top answer at the model's rule (t = {rule['threshold']:.6g}, min_pairs {rule['min_pairs']})",
        "",
        "What a desk sees: the first result, if the rule accepts one. Answered: the share of in-scope queries (a right "
        "answer is stored) whose first result passes the rule; precision: the share of the answered first results "
        "that are right. "
        + (f"Out of scope: {oos['queries']} queries whose labels ({len(oos['labels'])} of them, "
           f"--out-of-scope-fraction {oos['fraction']}) were removed from the stored questions; for them no match is "
           "right, and the column says how many got none. " if oos.get("labels") else
           "No label was held out (`--out-of-scope-fraction`), so no query is out of scope by design; ")
        + "Net: (right answers - wrong answers, out-of-scope answers included) / all queries.",
        "",
    ]
    lines += _table(
        ["variant", "min_pairs", "answered", "precision of answered tops", "right (share of in-scope)",
         "out of scope: no match", "net"],
        [
            [r["variant"], str(r["min_pairs"]), _f(r["answered_share"]), _f(r["precision"]), _f(r["right_share"]),
             _f(r["out_of_scope_no_match"]), _f(r["net"])]
            for r in top["at_model_threshold"]
        ],
    )
    agrees = "agree" if rule["index_agrees"] else "DIFFER"
    lines += [
        "",
        f"The model's rule ({rule['variant']}): answered {_f(rule['answered_share'])}, precision of answered tops "
        f"{_f(rule['precision'])}, out of scope no match {_f(rule['out_of_scope_no_match'])}; the service's index "
        f"gives the same first results ({agrees}, {rule['index_checked_queries']} queries checked). "
        + ("" if model["calibrated"] else "The model is NOT calibrated: run `qsim calibrate`."),
        "",
    ]
    return lines


def render_top_equal_precision(comparison: dict, heading: bool = True) -> list[str]:
    """Markdown for top_equal_precision_comparison(): answered share at each precision of the answered tops."""
    names = list(comparison["levels"][0]["answered_share"]) if comparison["levels"] else []
    lines = [
        "## Sampling against a single code, top answers at equal precision",
        "",
        "Largest share of queries answered with precision of the answered tops at least p (– where never reached).",
        "",
    ] if heading else []
    lines += _table(
        ["precision ≥", *names],
        [[f"{row['precision']:.3g}", *(_f(row["answered_share"][n]) for n in names)] for row in comparison["levels"]],
    )
    lines.append("")
    for name, verdict in comparison["versus_mean_code"].items():
        if verdict["levels_compared"]:
            lines.append(
                f"- {name}: answers more than the mean code at {verdict['levels_answering_more']} and fewer at "
                f"{verdict['levels_answering_fewer']} of {verdict['levels_compared']} precision levels; mean "
                f"difference in answered share {verdict['mean_answered_gain']:+.3f}."
            )
        else:
            lines.append(f"- {name}: no precision level both reach.")
    return lines
