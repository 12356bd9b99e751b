"""The ball partition's invariant, checked in float64: every sample lies inside its block's ball and
its group's ball, and blocks and groups tile the segment."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.search.bounds import FloatErrorModel, SearchGeometry
from app.search.partition import PartitionPlan, ranked_columns
from app.search.segment import Segment
from tests.search.cases import make_codes


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("questions", [1, 300, 5000])
def test_every_sample_lies_in_its_block_and_group_balls(metric, questions):
    codes = make_codes(np.random.default_rng(1), "clustered", (questions, 3, 16))
    codes[::7] *= 1000.0  # far outliers end up somewhere too
    plan = PartitionPlan(block_questions=8, cluster_min_questions=200, chunk_questions=32)
    segment = Segment.build(np.arange(questions), codes, SearchGeometry(metric), FloatErrorModel(16), plan)
    partition = segment.partition
    samples = segment.vectors.astype(np.float64)
    assert partition.offsets[0] == 0 and partition.offsets[-1] == questions
    assert (np.diff(partition.offsets) > 0).all()
    assert partition.group_offsets[0] == 0 and partition.group_offsets[-1] == partition.block_count
    for group in range(len(partition.group_offsets) - 1):
        first, last = partition.group_offsets[group], partition.group_offsets[group + 1]
        rows = samples[partition.offsets[first] : partition.offsets[last]].reshape(-1, 16)
        reach = np.linalg.norm(rows - partition.groups.centres[group].astype(np.float64), axis=1).max()
        assert reach <= partition.groups.radii[group]
        for block in range(first, last):
            rows = samples[partition.offsets[block] : partition.offsets[block + 1]].reshape(-1, 16)
            reach = np.linalg.norm(rows - partition.blocks.centres[block].astype(np.float64), axis=1).max()
            assert reach <= partition.blocks.radii[block]
    # Rows were only reordered.
    assert sorted(segment.ids.tolist()) == list(range(questions))
    assert np.array_equal(segment.codes[np.argsort(segment.ids)], codes)


@settings(max_examples=200, deadline=None)
@given(
    values=st.integers(1, 40).flatmap(
        lambda rows: st.integers(1, 6).flatmap(
            lambda columns: st.lists(
                st.lists(st.sampled_from([-1.5, -0.25, 0.0, 0.25, 0.5, 2.0]), min_size=columns, max_size=columns),
                min_size=rows, max_size=rows,
            )
        )
    ),
    data=st.data(),
)
def test_ranked_columns_are_the_rows_sorted_values_at_each_rank(values, data):
    array = np.asarray(values, dtype=np.float32)
    ranks = tuple(sorted(data.draw(st.sets(st.integers(1, array.shape[1]), min_size=1))))
    ordered = np.sort(array, axis=1)
    assert np.array_equal(ranked_columns(array, ranks, largest=True), np.stack([ordered[:, -r] for r in ranks]))
    assert np.array_equal(ranked_columns(array, ranks, largest=False), np.stack([ordered[:, r - 1] for r in ranks]))
