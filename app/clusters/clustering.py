"""Leader clustering of the similarity graph, free of SQL and HTTP.

The graph: question a and question b are joined when b is a match of a under the service's rule
(at least `min_pairs` of the K x K pairs of their codes within `threshold`); the rule is symmetric,
so the graph is undirected. Every question's neighbours come from the index's exact search.

Leader clustering: questions are taken in order of decreasing degree (most matches first, then
id); a question not yet in a cluster becomes a representative, and its neighbours not yet in a
cluster join it. So every member of a cluster matches its representative: a cluster is "these
are all the same question as this one", which is what merging duplicate FAQ entries needs, and
no chain of near neighbours drags unrelated questions together (connected components, computed
from the same graph, are reported beside it by bench/cluster_bench.py). Clusters of one question
are counted as singletons. Deterministic: the same questions and rule give the same clusters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.search import SimilarityIndex

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Graph:
    ids: np.ndarray  # (n,) int64, sorted
    neighbours: list[np.ndarray]  # per question: neighbour ids (int64), excluding itself
    distances: list[np.ndarray]  # matching closest-pair distances


@dataclass(frozen=True)
class Cluster:
    representative: int
    members: list[int]  # the representative first, then by distance to it, then id


def similarity_graph(
    index: SimilarityIndex, ids: np.ndarray, *, threshold: float, min_pairs: int, batch: int = 128,
    progress: Progress | None = None,
) -> Graph:
    """Every question's matches among `ids` (those stored in the index), exactly. The index may
    change while this runs (the service keeps writing): a question deleted before its turn is left
    out of the graph, and so is every edge to it."""
    stored = np.intersect1d(np.unique(np.asarray(ids, dtype=np.int64)), index.ids())
    searched: list[np.ndarray] = []
    neighbours: list[np.ndarray] = []
    distances: list[np.ndarray] = []
    for start in range(0, len(stored), batch):
        chunk = stored[start : start + batch]
        while True:
            try:
                codes = index.get_codes(chunk)
                break
            except KeyError:  # some were deleted meanwhile
                chunk = chunk[np.isin(chunk, index.ids())]
        found = index.search(codes, threshold=threshold, min_pairs=min_pairs, limit=len(stored), allowed=stored)
        searched.append(chunk)
        for qid, matches in zip(chunk.tolist(), found, strict=True):
            others = [m for m in matches if m.id != qid]
            neighbours.append(np.fromiter((m.id for m in others), dtype=np.int64, count=len(others)))
            distances.append(np.fromiter((m.distance for m in others), dtype=np.float64, count=len(others)))
        if progress:
            progress(min((start + batch) / max(len(stored), 1), 1.0))
    graph_ids = np.concatenate(searched) if searched else np.empty(0, dtype=np.int64)
    if len(graph_ids) < len(stored):
        kept = [np.isin(n, graph_ids) for n in neighbours]
        neighbours = [n[k] for n, k in zip(neighbours, kept, strict=True)]
        distances = [d[k] for d, k in zip(distances, kept, strict=True)]
    return Graph(graph_ids, neighbours, distances)


def leader_clusters(graph: Graph) -> list[Cluster]:
    """All clusters (singletons included), largest first, then by representative id."""
    position = {qid: i for i, qid in enumerate(graph.ids.tolist())}
    degree = np.array([len(n) for n in graph.neighbours], dtype=np.int64)
    order = np.lexsort((graph.ids, -degree))
    assigned = np.zeros(len(graph.ids), dtype=bool)
    clusters = []
    for row in order.tolist():
        if assigned[row]:
            continue
        assigned[row] = True
        leader = int(graph.ids[row])
        members = [leader]
        ranked = np.lexsort((graph.neighbours[row], graph.distances[row]))
        for qid in graph.neighbours[row][ranked].tolist():
            other = position[qid]
            if not assigned[other]:
                assigned[other] = True
                members.append(qid)
        clusters.append(Cluster(leader, members))
    clusters.sort(key=lambda c: (-len(c.members), c.representative))
    return clusters


def connected_components(graph: Graph) -> list[list[int]]:
    """The graph's connected components (single linkage), for comparison with leader clusters."""
    parent = list(range(len(graph.ids)))
    position = {qid: i for i, qid in enumerate(graph.ids.tolist())}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for row, others in enumerate(graph.neighbours):
        for qid in others.tolist():
            a, b = root(row), root(position[qid])
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for row, qid in enumerate(graph.ids.tolist()):
        groups.setdefault(root(row), []).append(qid)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def labels_of(clusters: list[list[int]], ids: np.ndarray) -> np.ndarray:
    """Cluster number per id of `ids` (for purity and ARI)."""
    number = {qid: c for c, members in enumerate(clusters) for qid in members}
    return np.array([number[int(qid)] for qid in ids], dtype=np.int64)


def purity(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of questions whose cluster's most common true label is their own."""
    total = 0
    for cluster in np.unique(predicted):
        _, counts = np.unique(truth[predicted == cluster], return_counts=True)
        total += int(counts.max())
    return total / len(truth) if len(truth) else 1.0
