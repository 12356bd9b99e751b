"""Duplicate-cluster benchmark on BANKING77: time for the bundled 10,003 questions, and purity and
adjusted Rand index against the intents, for the service's leader clustering side by side with
connected components of the same similarity graph.

    python -m bench.cluster_bench                       # models/default, its calibrated rule
    python -m bench.cluster_bench --min-pairs 1 13 25   # other rules too

Questions: data/banking77/train.csv (its `category` is the truth, used only for scoring). The graph
is built by the exact index (app/clusters/clustering.py: every question searched against all
others with the rule), then clustered. Purity: share of questions whose cluster's majority intent
is theirs (singletons count as their own cluster, so more singletons inflate purity; ARI does not
reward that). One thread; the load average is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--size", type=int, help="only the first N questions")
    parser.add_argument("--min-pairs", type=int, nargs="*", help="rules to compare (default: the model's own)")
    args = parser.parse_args()

    import torch
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from app.clusters.clustering import (
        connected_components,
        labels_of,
        leader_clusters,
        purity,
        similarity_graph,
    )
    from app.model.encoder import QuestionEncoder
    from app.search import SimilarityIndex

    torch.set_num_threads(1)
    threadpool_limits(1)
    rows = list(csv.DictReader((ROOT / "data" / "banking77" / "train.csv").open()))[: args.size]
    texts, truth = [r["text"] for r in rows], np.array([r["category"] for r in rows])
    encoder = QuestionEncoder.load(args.model)
    started = time.perf_counter()
    codes = encoder.sample(texts)
    encoded = time.perf_counter() - started
    ids = np.arange(1, len(texts) + 1, dtype=np.int64)
    index = SimilarityIndex(encoder.latent_dim, encoder.samples_per_question, encoder.metric,
                            model_id=encoder.model_id, device="cpu", background_merges=False)
    index.add(ids, codes)
    threshold = encoder.default_threshold
    rules = args.min_pairs or [encoder.default_min_pairs]
    print(f"{len(texts):,} BANKING77 questions ({len(set(truth))} intents), model {encoder.name} ({encoder.metric}, "
          f"d={encoder.latent_dim}, K={encoder.samples_per_question}); encoded in {encoded:.1f} s; "
          f"threshold {threshold:.4f}; load average {os.getloadavg()[0]:.1f}")
    print()
    print("| rule | method | graph s | cluster s | clusters (size >= 2) | singletons | largest | purity | ARI |")
    print("|---|---|---|---|---|---|---|---|---|")
    for min_pairs in rules:
        started = time.perf_counter()
        graph = similarity_graph(index, ids, threshold=threshold, min_pairs=min_pairs)
        graph_s = time.perf_counter() - started
        rule = f"t {threshold:.3f}, {min_pairs}-of-{encoder.samples_per_question ** 2}"
        for name, method in [("leader (service)", lambda g: [c.members for c in leader_clusters(g)]),
                             ("connected components", connected_components)]:
            started = time.perf_counter()
            clusters = method(graph)
            cluster_s = time.perf_counter() - started
            predicted = labels_of(clusters, ids)
            sizes = [len(c) for c in clusters]
            grouped = sum(1 for s in sizes if s > 1)
            print(f"| {rule} | {name} | {graph_s:.1f} | {cluster_s:.2f} | {grouped:,} | {len(sizes) - grouped:,} | "
                  f"{max(sizes):,} | {purity(predicted, truth):.3f} | {adjusted_rand_score(truth, predicted):.3f} |")


if __name__ == "__main__":
    main()
