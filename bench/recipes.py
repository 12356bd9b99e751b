"""Training recipes side by side: how each lever moves the latent's meaning (models/README.md).

    python -m bench.recipes --only teacher-full [--labels] [--epochs 8] [--desk snips]
    python -m bench.recipes --baselines

Each recipe is `qsim train` on the BANKING77 training questions (with the transfer set where the
recipe says so), measured on two held-out sets and never on the BANKING77 test split:

- in domain: the trainer's own validation rows of BANKING77 train (1,000 queries) against the
  other 9,003 questions; relevant = same intent;
- out of domain: SNIPS (data/snips: 1,000 queries against 3,000 stored requests, 7 intents), a
  domain no model here is trained on.

`--desk snips` trains on SNIPS's 3,000 stored requests instead (a desk in another domain training
on its own log; BANKING77 validation is then the out-of-domain set).

qsim ranks by the closest of the K x K code pairs (the service's order) and, for comparison, by the
mean code. TF-IDF, BM25 and all-MiniLM-L6-v2 (from the teacher's cache) run on the same splits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.evaluation.baselines import Bm25Baseline, TfidfBaseline, _rank_by_dense_scores  # noqa: E402
from app.evaluation.metrics import ranking_metrics  # noqa: E402
from app.evaluation.qsim import QsimRetriever  # noqa: E402
from app.model.config import ModelSettings  # noqa: E402
from app.model.data import read_corpus, read_lines  # noqa: E402
from app.model.train import split_train_validation  # noqa: E402

OUT = ROOT / "bench" / "out" / "recipes"
BANKING = ROOT / "data" / "banking77" / "train.csv"
TRANSFER = ROOT / "data" / "questions" / "transfer.txt"
SNIPS_STORED = ROOT / "data" / "snips" / "stored.csv"
SNIPS_QUERIES = ROOT / "data" / "snips" / "queries.csv"
DESKS = {"banking77": (BANKING, "text", "category"), "snips": (SNIPS_STORED, "text", "intent")}
TEXT_ONLY_OFF = {"label_weight": 0.0}
# What the rows with the transfer set measured before it had a pool (the shipped default's setting):
# all 40,000 questions, 10,000 per epoch. "corpus alone" = the recipe without the transfer set.
WHOLE_SET = {"transfer_pool": 0, "transfer_per_epoch": 10000}

# name -> (description, settings overrides by section, use the transfer set)
RECIPES: dict[str, tuple[str, dict, bool]] = {
    "vae-only": ("VAE alone (reconstruction + KL)", {"training": {"teacher": "none"}}, False),
    "relational": (
        "teacher: relational term only",
        {"training": {"teacher_regression_weight": 0.0, "embedding_init": "random", "augment": 0.0}},
        False,
    ),
    "regression": (
        "teacher: regression + relational",
        {"training": {"embedding_init": "random", "augment": 0.0}},
        False,
    ),
    "regression-init": ("+ subword embeddings from the teacher", {"training": {"augment": 0.0}}, False),
    "regression-init-augment": ("+ augmentation (the corpus alone)", {}, False),
    "teacher-full": ("+ the whole transfer set, 10,000 per epoch (the shipped default's)", {"training": WHOLE_SET}, True),
    "transfer-10k": (
        "+ transfer set, a pool of 10,000 of its questions, 10,000 per epoch",
        {"training": {"transfer_pool": 10000, "transfer_per_epoch": 10000}},
        True,
    ),
    "transfer-10k-half": (
        "+ transfer set, a pool of 10,000 of its questions, 5,000 per epoch (qsim train's default)",
        {"training": {"transfer_pool": 10000, "transfer_per_epoch": 5000}},
        True,
    ),
    "cosine": (
        "qsim train's default recipe (the transfer set's pool), learning rate on a cosine to 2% of it",
        {"training": {"transfer_pool": 10000, "transfer_per_epoch": 5000, "lr_schedule": "cosine"}},
        True,
    ),
    "teacher-full-cosine": (
        "the whole transfer set, 10,000 per epoch, learning rate on a cosine to 2% of it",
        {"training": {**WHOLE_SET, "lr_schedule": "cosine"}},
        True,
    ),
    "regression-only": (
        "the text-only recipe (corpus alone) without the relational term",
        {"training": {"teacher_weight": 0.0}},
        False,
    ),
    "relational-warm": (
        "the text-only recipe (corpus alone), relational term at teacher/student temperature 0.1/0.2",
        {"training": {"teacher_temperature": 0.1, "student_temperature": 0.2}},
        False,
    ),
    "capacity-small": (
        "the text-only recipe (corpus alone), smaller: embeddings 128, BiLSTM 96, decoder 128",
        {"architecture": {"embedding_dim": 128, "encoder_hidden": 96, "decoder_hidden": 128, "feature_size": 128}},
        False,
    ),
    "label-heavier": (
        "the whole transfer set's recipe, label term weight 60 (not 30), regression weight 10 (not 20)",
        {"training": {**WHOLE_SET, "label_weight": 60.0, "teacher_regression_weight": 10.0}},
        True,
    ),
    "label-margin": (
        "the whole transfer set's recipe, an additive margin of 0.2 on the own prototype's distance",
        {"training": {**WHOLE_SET, "label_margin": 0.2}},
        True,
    ),
    "label-contrast": (
        "the whole transfer set's recipe, plus the in-batch supervised contrastive term (weight 10)",
        {"training": {**WHOLE_SET, "label_contrast_weight": 10.0}},
        True,
    ),
    "capacity-large": (
        "the text-only recipe (corpus alone), larger: BiLSTM 256, decoder 384",
        {"architecture": {"encoder_hidden": 256, "decoder_hidden": 384}},
        False,
    ),
}


def split_banking(seed: int = 13, fraction: float = 0.1):
    corpus = read_corpus(BANKING, "text", "category")
    train, validation = split_train_validation(len(corpus), fraction, seed, corpus.texts)
    stored = [corpus.texts[i] for i in train], [corpus.labels[i] for i in train]
    queries = [corpus.texts[i] for i in validation], [corpus.labels[i] for i in validation]
    return stored, queries


def split_snips():
    stored = read_corpus(SNIPS_STORED, "text", "intent")
    queries = read_corpus(SNIPS_QUERIES, "text", "intent")
    return (stored.texts, stored.labels), (queries.texts, queries.labels)


def evaluation_sets(desk: str = "banking77"):
    if desk == "snips":
        return {"SNIPS (the desk's own domain)": split_snips(), "BANKING77 validation (out of domain)": split_banking()}
    return {"BANKING77 validation": split_banking(), "SNIPS (out of domain)": split_snips()}


def measure_baselines(sets) -> dict:
    from app.model.teacher import teacher_embeddings

    rows = {}
    for set_name, ((stored, stored_labels), (queries, query_labels)) in sets.items():
        for baseline in (TfidfBaseline(), Bm25Baseline()):
            baseline.fit(stored)
            ranked = baseline.rank(baseline.encode(queries), 10)
            rows[(set_name, baseline.name)] = ranking_metrics(ranked, stored_labels, query_labels)
        ranked = _rank_by_dense_scores(teacher_embeddings("minilm", queries), teacher_embeddings("minilm", stored), 10)
        rows[(set_name, "all-MiniLM-L6-v2")] = ranking_metrics(ranked, stored_labels, query_labels)
    return rows


def measure_model(model_dir: Path, sets) -> dict:
    from app.model.encoder import QuestionEncoder

    encoder = QuestionEncoder.load(model_dir)
    rows = {}
    for set_name, ((stored, stored_labels), (queries, query_labels)) in sets.items():
        for mean_code in (False, True):
            retriever = QsimRetriever(encoder, mean_code=mean_code, device="cpu")
            retriever.fit(stored)
            ranked = retriever.rank(retriever.encode(queries), 10)
            rows[(set_name, "mean code" if mean_code else "any-of-25")] = ranking_metrics(ranked, stored_labels, query_labels)
    return rows


def train(
    name: str, overrides: dict, transfer: bool, labels: bool, epochs: int | None, desk: str = "banking77"
) -> tuple[Path, float]:
    from app.model.train import Trainer

    settings = ModelSettings()
    for section, values in overrides.items():
        for key, value in values.items():
            setattr(getattr(settings, section), key, value)
    if not labels:
        settings.training.label_weight = 0.0
    if epochs:
        settings.training.epochs = epochs
    out = OUT / ("" if desk == "banking77" else desk) / ("labels" if labels else "text") / name
    path, text_column, label_column = DESKS[desk]
    corpus = read_corpus(path, text_column, label_column if labels else None)
    started = time.perf_counter()
    Trainer(
        corpus, out, settings, seed=13, progress=False, log=lambda line: print(f"  [{name}] {line}", flush=True),
        transfer=read_lines(TRANSFER) if transfer else None,
    ).run()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=[])
    parser.add_argument("--labels", action="store_true", help="train with the BANKING77 categories")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--desk", choices=sorted(DESKS), default="banking77", help="the questions the recipes train on")
    parser.add_argument("--baselines", action="store_true", help="also measure TF-IDF, BM25 and MiniLM")
    parser.add_argument("--model", type=Path, nargs="*", default=[], help="measure these trained models as well")
    args = parser.parse_args()
    sets = evaluation_sets(args.desk)
    results: dict[str, tuple[dict, float | None]] = {}
    if args.baselines:
        for (set_name, method), metrics in measure_baselines(sets).items():
            results.setdefault(method, ({}, None))[0][set_name] = metrics
    for name in args.only:
        description, overrides, transfer = RECIPES[name]
        model_dir, seconds = train(name, overrides, transfer, args.labels, args.epochs, args.desk)
        for (set_name, variant), metrics in measure_model(model_dir, sets).items():
            results.setdefault(f"{description} [{variant}]", ({}, seconds))[0][set_name] = metrics
    for model_dir in args.model:
        for (set_name, variant), metrics in measure_model(model_dir, sets).items():
            results.setdefault(f"{model_dir} [{variant}]", ({}, None))[0][set_name] = metrics
    names = list(sets)
    print()
    print("| method | " + " | ".join(f"{n} P@1 | {n} MAP@10" for n in names) + " | train s |")
    print("|---|" + "---|---|" * len(names) + "---|")
    for method, (by_set, seconds) in results.items():
        cells = " | ".join(f"{by_set[n].precision_at_1:.3f} | {by_set[n].map_at_10:.3f}" for n in names)
        print(f"| {method} | {cells} | {'' if seconds is None else f'{seconds:.0f}'} |")
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "results.jsonl").open("a") as handle:
        for method, (by_set, seconds) in results.items():
            handle.write(json.dumps({"method": method, "desk": args.desk, "labels": args.labels, "seconds": seconds, **{
                n: {"p_at_1": m.precision_at_1, "map_at_10": m.map_at_10} for n, m in by_set.items()}}) + "\n")


if __name__ == "__main__":
    main()
