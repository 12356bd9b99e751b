"""The threshold rule through the service's index, checked against the exact sweep."""

import numpy as np

from app.evaluation import report
from app.evaluation.calibrate import sweep_labelled
from app.evaluation.qsim import QsimRetriever
from app.model.data import Corpus


def test_large_returned_sets_are_checked_on_a_sample_of_queries(tiny_encoder, tiny_corpus_rows, monkeypatch):
    stored_rows, query_rows = tiny_corpus_rows[::2], tiny_corpus_rows[1::2]
    corpus = Corpus([r["text"] for r in stored_rows], [r["category"] for r in stored_rows])
    queries = Corpus([r["text"] for r in query_rows], [r["category"] for r in query_rows])
    retriever = QsimRetriever(tiny_encoder, device="cpu")
    retriever.fit(corpus.texts)
    encoded = retriever.encode(queries.texts)
    sweeps = sweep_labelled(tiny_encoder, corpus.texts, corpus.labels, queries.texts, queries.labels, [2],
                            stored=retriever.corpus, queries=encoded)
    threshold = float(np.median(sweeps.by_min_pairs[2].relevant))  # about half of each query's label returned
    expected = sweeps.by_min_pairs[2].at(threshold)

    monkeypatch.setattr(report, "INDEX_CHECK_MAX_RETURNED", expected.returned // 4)
    (row,) = report._rule_at_threshold(
        {"2-of-25": (retriever, 2)}, {"2-of-25": sweeps.by_min_pairs[2]}, encoded, corpus, queries, threshold
    )
    assert (row["precision"], row["recall"], row["returned"]) == (expected.precision, expected.recall, expected.returned)
    assert 0 < row["index_checked_queries"] < len(queries)
    assert row["index_agrees"]
