"""The similarity graph of a cluster job is built over a live index: writes go on while it runs."""

from __future__ import annotations

import numpy as np

from app.clusters.clustering import leader_clusters, similarity_graph
from app.search import SimilarityIndex


def grouped_index(groups: int, per_group: int) -> SimilarityIndex:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(groups, 8))
    codes = np.repeat(centres, per_group, axis=0)[:, None, :] + rng.normal(scale=0.01, size=(groups * per_group, 3, 8))
    index = SimilarityIndex(8, 3, "l2", model_id="0123456789abcdef", device="cpu")
    index.add(np.arange(1, groups * per_group + 1), codes.astype(np.float32))
    return index


def test_a_question_deleted_while_the_graph_is_built_is_left_out_not_an_error():
    index = grouped_index(groups=10, per_group=30)  # ids 1..300, groups of 30 consecutive ids
    # One per batch of 64, each before its own turn: 150 after batch 1, before any of its group is
    # searched; 130 after batch 2, when 121-128 already found it as their neighbour; 300 after batch 3.
    deleted = [300, 130, 150]

    def delete_during_the_job(share: float) -> None:
        if deleted and share < 1:
            index.remove([deleted.pop()])

    graph = similarity_graph(index, index.ids(), threshold=0.5, min_pairs=1, batch=64, progress=delete_during_the_job)
    assert not deleted
    gone = {130, 150, 300}
    assert gone.isdisjoint(graph.ids.tolist())
    assert len(graph.ids) == len(graph.neighbours) == 297
    assert all(gone.isdisjoint(n.tolist()) for n in graph.neighbours)  # 121-128's edges to 130 dropped too
    sizes = sorted(len(c.members) for c in leader_clusters(graph))
    assert sum(sizes) == 297 and sizes[-1] == 30
