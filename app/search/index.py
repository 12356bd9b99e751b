"""SimilarityIndex: the stored questions' codes, searched by the any-of-K x Kq pairs rule.

Concurrency: one writer, many readers. The index's state is an immutable `Snapshot` (segment views
and the revision) held in one attribute; a write builds the next snapshot and publishes it with a
single reference assignment, so a search works on whichever snapshot it picked up, entirely, never
waits for a write and never sees half of one. A write only builds a segment for its own upserts
and copies the live masks (one byte per question) of segments it deletes from: it costs the size of
the write, not of the collection. Segments are merged by a tiered policy, in a background thread by
default; a merge publishes its result the same way and re-applies deletions that happened meanwhile.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.search.accelerator import GPU_MAX_K, CpuFlatKnn, GpuAccelerator, resolve_device
from app.search.approximate import KINDS, ApproximateIndex, ApproximateSpec
from app.search.bounds import MAX_ABS_CODE, FloatErrorModel, SearchGeometry
from app.search.merging import MergePolicy
from app.search.partition import Balls, Partition, PartitionPlan
from app.search.reference import METRICS, Match, order_matches
from app.search.refine import Rule, collect
from app.search.segment import Segment, SegmentView
from app.search.sources import (
    ApproximateSource,
    BlockSource,
    CandidateSource,
    KnnSource,
    LegacyBlockSource,
    PreparedQuery,
    ScannedSource,
    batch_bounds,
    dense_question_bounds,
    subset_source,
)
from app.search.storage import IndexFileError, load_threads, parallel_map, read_index, write_index
from app.search.storage import index_exists as _index_exists

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("auto", "blocks", "knn", "legacy-blocks")
# Batched exact searches: queries per GEMM scan, and when a segment is scanned densely.
DENSE_BATCH_QUERIES = 16
DENSE_MIN_QUESTIONS = 4096
# A GEMM scan pays off when the blocks would be read anyway: for a batch when half of the segment
# would be, for a lone query (no GEMM batching to gain) only when nearly all of it would be.
DENSE_MIN_READ_FRACTION = 0.5
DENSE_MIN_READ_FRACTION_SINGLE = 0.9
DENSE_MIN_QUERIES = 8
# Queries whose first k-NN round shares one GPU call.
GPU_BATCH_QUERIES = 256
# Filtered searches: a segment whose allowed questions are at most this many, or this share of it,
# is searched by reading only those questions' codes; above, by the usual sources with the
# questions the filter drops masked out (both exact).
SUBSET_MAX_QUESTIONS = 4096
SUBSET_MAX_FRACTION = 0.05
# An approximate segment proposes candidates from all its questions before the filter masks them,
# so a filter that keeps under this share of them would lose most of its matches to the mask: such
# a segment reads the questions that pass instead (exactly).
APPROXIMATE_MIN_KEPT_FRACTION = 0.5
# Questions per partition block (k-means cluster). Smaller blocks bound tighter, more blocks cost
# more to bound: with question caps (cosine) 16-32 read about the same at 100k real codes, and 32
# was the faster at 1M synthetic l2 codes (no question caps there) than 16 or the former 48.
BLOCK_QUESTIONS = 32


@dataclass(frozen=True)
class Snapshot:
    """What one search sees: segment views (largest first) and the revision of that state."""

    views: tuple[SegmentView, ...]
    revision: int | None

    @property
    def count(self) -> int:
        return sum(view.live_count for view in self.views)


class SimilarityIndex:
    """Stored questions (integer ids, K codes of dimension `dim` each) searched by the pairs rule.

    kind: 'exact' (default; results equal `reference.brute_force_search`) or an approximate
    candidate structure ('ivf', 'hnsw', 'sq8': returned distances and counts are exact, recall may
    be below 1). device: 'auto' (GPU when FAISS sees one), 'cpu' or 'cuda'.

    Tuning (keyword-only): strategy 'auto' | 'blocks' | 'knn' | 'legacy-blocks' (how exact
    candidates are found: 'auto' is partition blocks on CPU and k-NN on GPU; 'knn' on CPU runs the
    GPU strategy, with `knn_max_k` as its k limit, for tests; 'legacy-blocks' is the previous block
    search, ball bounds only, kept for A/B benchmarks); block_questions / cluster_min_questions / group_factor (partition);
    nlist, nprobe, hnsw_m, ef_construction, ef_search, approximate_min_questions (approximate kinds);
    merge_factor, merge_floor_questions and background_merges (segment merging, see merging.py).
    """

    def __init__(
        self,
        dim: int,
        samples_per_item: int,
        metric: str = "l2",
        kind: str = "exact",
        device: str = "auto",
        model_id: str = "",
        *,
        strategy: str = "auto",
        knn_max_k: int | None = None,
        block_questions: int = BLOCK_QUESTIONS,
        cluster_min_questions: int = 4096,
        group_factor: int = 4,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
        approximate_min_questions: int = 20_000,
        merge_factor: int = 8,
        merge_floor_questions: int = 1024,
        background_merges: bool = True,
    ):
        self.dim = _positive_int("dim", dim)
        self.samples_per_item = _positive_int("samples_per_item", samples_per_item)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not isinstance(model_id, str) or not model_id or any(c.isspace() for c in model_id):
            raise ValueError(f"model_id must be a non-empty string without spaces, got {model_id!r}")
        self.metric = metric
        self.kind = kind
        self.model_id = model_id
        self.device = resolve_device(device)
        self._geometry = SearchGeometry(metric)
        self._errors = FloatErrorModel(self.dim)
        self._plan = PartitionPlan(
            block_questions=block_questions, cluster_min_questions=cluster_min_questions, group_factor=group_factor
        )
        self._approximate = None
        if kind != "exact":
            self._approximate = ApproximateSpec(
                kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                ef_search=ef_search, min_questions=approximate_min_questions,
            )
        self._accelerator = GpuAccelerator() if self.device == "cuda" else None
        self.strategy = ("knn" if self._accelerator else "blocks") if strategy == "auto" else strategy
        if knn_max_k is not None and (self.strategy != "knn" or self._accelerator is not None):
            raise ValueError("knn_max_k only applies to strategy 'knn' on the CPU (the GPU limit is fixed by FAISS)")
        # The k limit of the CPU twin of the GPU strategy (tests set it tiny to force the fallback).
        self._cpu_knn_max_k = _positive_int("knn_max_k", knn_max_k if knn_max_k is not None else GPU_MAX_K)
        self._merge_policy = MergePolicy(factor=merge_factor, floor_questions=merge_floor_questions)
        self._background_merges = bool(background_merges)
        self._write_lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._merge_thread: threading.Thread | None = None
        self.merge_error: BaseException | None = None
        self._snapshot = Snapshot((), None)

    # ---------------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return self._snapshot.count

    def __contains__(self, question_id: object) -> bool:
        if not isinstance(question_id, numbers.Integral) or isinstance(question_id, bool):
            return False
        wanted = np.array([int(question_id)], dtype=np.int64)
        for view in self._snapshot.views:
            found, rows = view.segment.rows_of(wanted)
            if found[0] and view.live[rows[0]]:
                return True
        return False

    @property
    def revision(self) -> int | None:
        return self._snapshot.revision

    @property
    def segment_count(self) -> int:
        return len(self._snapshot.views)

    def ids(self) -> np.ndarray:
        """All stored ids, ascending. (n,) int64."""
        views = self._snapshot.views
        if not views:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate([view.live_ids() for view in views]))

    def get_codes(self, ids) -> np.ndarray:
        """ids (m,) -> their codes (m, K, D) float32; KeyError naming ids that are not stored."""
        wanted = _as_ids("ids", ids)
        snapshot = self._snapshot
        out = np.empty((len(wanted), self.samples_per_item, self.dim), dtype=np.float32)
        found_any = np.zeros(len(wanted), dtype=bool)
        for view in snapshot.views:
            found, rows = view.segment.rows_of(wanted)
            live = view.live[rows]
            positions = np.flatnonzero(found)[live]
            out[positions] = view.segment.codes[rows[live]]
            found_any[positions] = True
        if not found_any.all():
            missing = wanted[~found_any]
            raise KeyError(f"{len(missing)} id(s) not in the index, e.g. {missing[:5].tolist()}")
        return out

    def memory_bytes(self) -> int:
        """Host memory held by the current snapshot's arrays and FAISS structures."""
        return sum(view.segment.nbytes() + view.live.nbytes for view in self._snapshot.views)

    def search(
        self, queries, *, threshold: float, min_pairs: int = 1, limit: int = 10, allowed=None
    ) -> list[list[Match]]:
        """queries (nq, Kq, D) -> one ordered list of matches per query (see reference.py for the rule).

        threshold may be math.inf (every question qualifies: the `limit` nearest by closest pair).
        allowed: None (every stored question), or ids (m,): the rule is evaluated over only those
        of them that are stored, exactly as the reference over that subset, at any selectivity.
        The caller decides which ids pass (a metadata filter); the index only takes the ids."""
        codes = _as_codes("queries", queries, self.dim, None)
        threshold = _as_threshold(threshold)
        min_pairs = _non_negative_int("min_pairs", min_pairs)
        limit = _non_negative_int("limit", limit)
        snapshot = self._snapshot
        nq, kq = codes.shape[:2]
        rule = Rule(self.metric, threshold, min_pairs, limit)
        subsets: dict[str, np.ndarray] = {}
        masked_approximate: set[str] = set()
        if allowed is not None:
            snapshot, subsets = self._restrict(snapshot, _as_ids("allowed", allowed))
            masked_approximate = {view.segment.name for view in snapshot.views
                                  if view.segment.approximate is not None and view.segment.name not in subsets}
        if limit == 0 or not snapshot.views or min_pairs > kq * self.samples_per_item:
            return [[] for _ in range(nq)]
        prepared = [PreparedQuery.prepare(codes[i], self._geometry) for i in range(nq)]
        results = []
        chunk_size = GPU_BATCH_QUERIES if self._accelerator is not None else DENSE_BATCH_QUERIES
        for start in range(0, nq, chunk_size):
            chunk = prepared[start : start + chunk_size]
            first_rounds = self._batched_first_rounds(snapshot, chunk, rule, skip=subsets)
            dense = self._dense_bounds(snapshot, chunk, rule, skip=subsets)
            blocks = self._block_sources(snapshot, chunk, rule, dense, skip=subsets)
            for i, query in enumerate(chunk):
                best: list[Match] = []
                for view in snapshot.views:
                    name = view.segment.name
                    if name in subsets:
                        source = subset_source(view.segment, subsets[name], query, self._geometry, self._errors)
                    elif name in dense:
                        source = ScannedSource(dense[name][i])
                    elif name in blocks:
                        source = blocks[name][i]
                    else:
                        first = first_rounds.get(name)
                        source = self._source(view.segment, query, rule, first[i] if first else None)
                    if name in masked_approximate:
                        best = order_matches(best + self._filtered_approximate(view, query, rule, source), rule.limit)
                        continue
                    best = collect(view, query, rule, source, best)
                results.append(best)
        return results

    def _filtered_approximate(self, view: SegmentView, query: PreparedQuery, rule: Rule, source) -> list[Match]:
        """One approximate segment under a filter: its structure proposes the query's neighbourhood
        before the filter masks it, and a filter that dropped that neighbourhood (another tenant's
        questions) leaves too few. Then the questions that pass are read instead (exactly)."""
        own = collect(view, query, rule, source, [])
        if len(own) < rule.limit and len(own) < view.live_count:
            rows = np.flatnonzero(view.live)
            own = collect(view, query, rule, subset_source(view.segment, rows, query, self._geometry, self._errors), [])
        return own

    @staticmethod
    def _restrict(snapshot: Snapshot, allowed: np.ndarray) -> tuple[Snapshot, dict[str, np.ndarray]]:
        """The snapshot with every question outside `allowed` masked out of its views, and, for the
        segments where few questions are left, those rows (searched by reading only them)."""
        if len(allowed) > 1 and not (allowed[1:] > allowed[:-1]).all():  # callers usually pass sorted ids
            allowed = np.sort(allowed)
            allowed = allowed[np.concatenate([[True], allowed[1:] != allowed[:-1]])]
        views, subsets = [], {}
        for view in snapshot.views:
            found, rows = view.segment.rows_of(allowed)
            rows = rows[view.live[rows]]
            if not len(rows):
                continue
            mask = np.zeros(view.segment.size, dtype=bool)
            mask[rows] = True
            views.append(SegmentView(view.segment, mask, len(rows)))
            few = len(rows) <= SUBSET_MAX_QUESTIONS or len(rows) <= SUBSET_MAX_FRACTION * view.segment.size
            masked_away = view.segment.approximate is not None and len(rows) < APPROXIMATE_MIN_KEPT_FRACTION * view.segment.size
            if few or masked_away:
                subsets[view.segment.name] = np.sort(rows)
        return Snapshot(tuple(views), snapshot.revision), subsets

    def _block_sources(
        self, snapshot: Snapshot, chunk: list[PreparedQuery], rule: Rule, dense: dict[str, np.ndarray],
        skip: dict | None = None,
    ) -> dict[str, list[BlockSource]]:
        """Strategy 'blocks': each query's block source per exact segment, and, in `dense`, the
        segments the partition cannot prune well, scanned once for all queries of the batch by GEMM
        (4x the arithmetic rate of per-query scans here) instead of block by block. Whether it
        prunes is what the sources' own group and block bounds say (no second bounding pass)."""
        if self.strategy != "blocks":
            return {}
        min_share = DENSE_MIN_READ_FRACTION if len(chunk) >= DENSE_MIN_QUERIES else DENSE_MIN_READ_FRACTION_SINGLE
        sources = {}
        for view in snapshot.views:
            segment = view.segment
            if segment.approximate is not None or (skip and segment.name in skip):
                continue
            shared = batch_bounds(segment, chunk, self._geometry, self._errors, rule.pair_count_rule) if len(chunk) > 1 else None
            built = [
                BlockSource(segment, query, self._geometry, self._errors, rule=rule.pair_count_rule,
                            bounds=shared[i] if shared else None)
                for i, query in enumerate(chunk)
            ]
            if segment.size >= DENSE_MIN_QUESTIONS and np.mean([s.within_reach_share() for s in built]) >= min_share:
                dense[segment.name] = dense_question_bounds(segment, chunk, self._geometry, self._errors)
            else:
                sources[segment.name] = built
        return sources

    def _dense_bounds(
        self, snapshot: Snapshot, chunk: list[PreparedQuery], rule: Rule, skip: dict | None = None
    ) -> dict[str, np.ndarray]:
        """Strategy 'legacy-blocks': segments the ball partition cannot prune well are scanned once for
        all queries of the batch by GEMM instead of block by block."""
        if self.strategy != "legacy-blocks":
            return {}
        min_share = DENSE_MIN_READ_FRACTION if len(chunk) >= DENSE_MIN_QUERIES else DENSE_MIN_READ_FRACTION_SINGLE
        reach = 0.0 if rule.everything_qualifies else self._geometry.search_radius(rule.threshold)
        dense = {}
        for view in snapshot.views:
            segment = view.segment
            if segment.approximate is not None or segment.size < DENSE_MIN_QUESTIONS or (skip and segment.name in skip):
                continue
            if self._reads_at_least(segment, chunk, reach, min_share):
                dense[segment.name] = dense_question_bounds(segment, chunk, self._geometry, self._errors)
        return dense

    def _reads_at_least(self, segment: Segment, chunk: list[PreparedQuery], reach: float, min_share: float) -> bool:
        """Whether the queries must read, on average, at least `min_share` of the segment's
        questions: those in blocks whose lower bound is within `reach` (the threshold's search
        radius; 0 when every question qualifies and only the limit prunes). Well-separated codes
        read a few blocks; a threshold wide compared with the spread of the data reads most of them.
        The ~sqrt(blocks) group balls answer first (an upper estimate); only when they reach
        `min_share` are all block balls bounded, in one GEMM."""
        partition = segment.partition
        stacked = np.concatenate([q.search for q in chunk])
        norms = np.concatenate([q.norms for q in chunk])

        def share(balls: Balls, sizes: np.ndarray) -> float:
            bounds = balls.lower_bounds(stacked, norms, self._errors)  # (queries x Kq, balls)
            nearest = bounds.reshape(len(chunk), -1, bounds.shape[1]).min(axis=1)
            return float(((nearest <= reach) @ sizes).mean() / segment.size)

        group_sizes = np.diff(partition.offsets[partition.group_offsets])
        if share(partition.groups, group_sizes) < min_share:
            return False
        return share(partition.blocks, np.diff(partition.offsets)) >= min_share

    def _first_k(self, rule: Rule, max_k: int) -> int:
        return min(max_k, max(256, 4 * rule.limit * self.samples_per_item))

    def _batched_first_rounds(
        self, snapshot: Snapshot, prepared: list[PreparedQuery], rule: Rule, skip: dict | None = None
    ) -> dict:
        """On the GPU, the first k-NN round of all queries of a batch runs as one call per segment."""
        if self._accelerator is None or len(prepared) < 2:
            return {}
        stacked = np.concatenate([q.search for q in prepared])
        rounds = {}
        for view in snapshot.views:
            segment = view.segment
            if segment.approximate is not None or segment.accelerator is None or (skip and segment.name in skip):
                continue
            k = min(self._first_k(rule, segment.accelerator.max_k), segment.flat_vectors.shape[0])
            squared, labels = segment.accelerator.knn(stacked, k)
            bounds = np.cumsum([0] + [len(q.search) for q in prepared])
            rounds[segment.name] = [
                (squared[bounds[i] : bounds[i + 1]], labels[bounds[i] : bounds[i + 1]]) for i in range(len(prepared))
            ]
        return rounds

    def _source(self, segment: Segment, query: PreparedQuery, rule: Rule, first_round) -> CandidateSource:
        if segment.approximate is not None:
            if rule.everything_qualifies:
                squared_radius = math.inf
            else:
                radius = self._geometry.search_radius(rule.threshold)
                slack = float(self._errors.squared_slack(query.norms, segment.max_norm).max())
                squared_radius = radius * radius + slack
            return ApproximateSource(segment, query, squared_radius, max(64, 4 * rule.limit * self.samples_per_item))
        if self.strategy == "knn":
            backend = segment.accelerator or CpuFlatKnn(segment.flat_vectors, self._cpu_knn_max_k, self._errors)
            first_k = self._first_k(rule, backend.max_k)
            return KnnSource(segment, query, self._geometry, backend, first_k, self._errors, first_round)
        if self.strategy == "legacy-blocks":
            return LegacyBlockSource(segment, query, self._geometry, self._errors)
        return BlockSource(segment, query, self._geometry, self._errors, rule=rule.pair_count_rule)

    # ---------------------------------------------------------------------------------- writing

    def apply(self, upsert_ids=None, upsert_codes=None, remove_ids=None, revision: int | None = None) -> None:
        """One atomic write: readers see all of it or none of it.

        upsert_ids (n,) int64 with upsert_codes (n, K, D): add these questions, replacing all K codes
        of ids already stored. remove_ids (m,): delete these (unknown ids are ignored). revision: an
        opaque integer checkpoint stored with the data (None keeps the current one)."""
        self._apply(upsert_ids, upsert_codes, remove_ids, revision)

    def add(self, ids, codes, revision: int | None = None) -> None:
        """Insert or replace questions (same as apply with upserts only)."""
        self._apply(ids, codes, None, revision)

    def remove(self, ids, revision: int | None = None) -> int:
        """Delete questions; returns how many of `ids` were stored."""
        return self._apply(None, None, ids, revision)

    def _apply(self, upsert_ids, upsert_codes, remove_ids, revision) -> int:
        upserts, codes, removals = self._validate_write(upsert_ids, upsert_codes, remove_ids)
        if revision is not None:
            revision = _revision(revision)
        # Writers are serialised for the whole write, building included, so that writes (and their
        # revisions) take effect in the order they were made.
        with self._write_lock:
            current = self._snapshot
            views = []
            if len(upserts):
                segment = self._prepared(Segment.build(upserts, codes, self._geometry, self._errors, self._plan, self._approximate))
                views.append(SegmentView.all_live(segment))
            touched = np.concatenate([removals, upserts])
            removed = 0
            for view in current.views:
                found, rows = view.segment.rows_of(touched)
                live = view.live[rows]
                removed += int((live & (np.flatnonzero(found) < len(removals))).sum())
                if live.any():
                    view = view.without_rows(rows[live])
                if view.live_count:
                    views.append(view)
            self._publish(views, revision if revision is not None else current.revision)
            self._schedule_merges()
        return removed

    def _prepared(self, segment: Segment) -> Segment:
        """A new segment, not yet visible to readers, with what searches of it need: its block bounds
        (caps for cosine; the block strategy, and the k-NN strategy's host fallback) and its GPU copies."""
        return self._attach(self._bounded(segment))

    def _bounded(self, segment: Segment) -> Segment:
        """The host part of _prepared (numpy only: safe on a loader thread)."""
        if self.strategy != "legacy-blocks" and segment.approximate is None:
            segment.block_bounds(self._geometry, self._errors)
        return segment

    def _attach(self, segment: Segment) -> Segment:
        """The GPU part of _prepared, on the calling thread."""
        if self._accelerator is not None:
            self._accelerator.attach(segment, flat=self.strategy == "knn")
        return segment

    def _validate_write(self, upsert_ids, upsert_codes, remove_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return validated_write(upsert_ids, upsert_codes, remove_ids, self.dim, self.samples_per_item)

    def _publish(self, views: list[SegmentView], revision: int | None) -> None:
        views.sort(key=lambda view: -view.live_count)
        self._snapshot = Snapshot(tuple(views), revision)

    # ---------------------------------------------------------------------------------- merging

    def _schedule_merges(self) -> None:
        """Called with the write lock held."""
        if self._merge_policy.pick(self._snapshot.views) is None:
            return
        if not self._background_merges:
            self._merge_until_settled()
        elif self._merge_thread is None:
            # Started before it is published: wait_for_merges joins whatever thread it reads, and
            # joining one not yet started raises. It cannot finish first: it needs this lock.
            thread = threading.Thread(target=self._merge_in_background, name="qsim-index-merge", daemon=True)
            thread.start()
            self._merge_thread = thread

    def _merge_in_background(self) -> None:
        try:
            self._merge_until_settled()
        except BaseException as error:  # a failed merge leaves more segments, never a wrong index
            self.merge_error = error
            log.exception("index segment merge failed; the index stays correct with more segments")
        finally:
            with self._write_lock:
                self._merge_thread = None
                # Writes that arrived while this thread was finishing may have made new work.
                if self.merge_error is None and self._merge_policy.pick(self._snapshot.views) is not None:
                    self._schedule_merges()

    def _merge_until_settled(self) -> None:
        while True:
            with self._write_lock:
                task = self._merge_policy.pick(self._snapshot.views)
            if task is None:
                return
            self._merge(task)

    def _merge(self, task: tuple[SegmentView, ...]) -> None:
        ids = np.concatenate([view.live_ids() for view in task])
        codes = np.concatenate([view.segment.codes[view.live] for view in task])
        merged = self._prepared(Segment.build(ids, codes, self._geometry, self._errors, self._plan, self._approximate))
        with self._write_lock:
            current = {view.segment: view for view in self._snapshot.views}
            died = []
            for old in task:
                now = current.get(old.segment)
                if now is None:
                    died.append(old.live_ids())
                elif now.live is not old.live:
                    died.append(old.segment.ids[old.live & ~now.live])
            view = SegmentView.all_live(merged)
            if died:
                _, rows = merged.rows_of(np.concatenate(died))
                view = view.without_rows(rows)
            merged_away = {old.segment for old in task}
            views = [v for v in self._snapshot.views if v.segment not in merged_away]
            if view.live_count:
                views.append(view)
            self._publish(views, self._snapshot.revision)

    def compact(self) -> None:
        """Merge every segment into one, now (after a bulk build: each search pays a fixed cost per
        segment, and a build written page by page leaves one or more segments per page)."""
        self.wait_for_merges()
        with self._write_lock:
            views = self._snapshot.views
        if len(views) > 1:
            self._merge(views)

    def wait_for_merges(self, timeout: float | None = None) -> bool:
        """Wait until no background merge is running (a finishing merge may start the next one);
        True if none is, False if `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (thread := self._merge_thread) is not None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            thread.join(remaining)
        return True

    # ------------------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        """Write the current snapshot to `directory` atomically (see storage.py); returns its folder."""
        with self._save_lock:
            snapshot = self._snapshot
            header = {
                "model_id": self.model_id,
                "dim": self.dim,
                "samples_per_item": self.samples_per_item,
                "metric": self.metric,
                "kind": self.kind,
                "count": snapshot.count,
                "revision": snapshot.revision,
            }
            return write_index(Path(directory), header, [(view.segment, view.live) for view in snapshot.views])

    @staticmethod
    def exists(directory: Path) -> bool:
        return _index_exists(Path(directory))

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        expected_model_id: str | None = None,
        expected_dim: int | None = None,
        expected_samples: int | None = None,
        expected_metric: str | None = None,
        expected_kind: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        **options,
    ) -> SimilarityIndex:
        """Load and verify an index saved by `save`; IndexFileError says what is wrong otherwise.
        `options` are the tuning keywords of the constructor. Files are read and segments prepared
        on `threads` threads (default: storage.load_threads())."""
        threads = load_threads() if threads is None else threads
        stored = read_index(Path(directory), {
            "model_id": expected_model_id,
            "dim": expected_dim,
            "samples_per_item": expected_samples,
            "metric": expected_metric,
            "kind": expected_kind,
        }, threads=threads)
        header = stored.header
        try:
            index = cls(
                header["dim"], header["samples_per_item"], header["metric"], header["kind"], device,
                header["model_id"], **options,
            )
        except ValueError as error:  # a header no index of this qsim could have written
            raise IndexFileError(f"index manifest in {directory} describes no index qsim can serve: {error}") from None

        def bounded(part) -> Segment:
            partition = Partition.from_arrays(part.partition)
            vectors = index._geometry.to_search_space(part.codes)
            approximate = None
            if part.approximate is not None:
                approximate = ApproximateIndex.deserialize(index._approximate, part.approximate)
            return index._bounded(Segment(part.ids, part.codes, vectors, partition, approximate, name=part.name))

        parts = sorted(stored.segments, key=lambda part: -len(part.ids))  # largest first: threads finish together
        views = []
        for part, segment in zip(parts, parallel_map(bounded, parts, threads), strict=True):
            index._attach(segment)
            if part.live.any():
                views.append(SegmentView(segment, part.live))
        index._publish(views, header["revision"])
        return index


# ------------------------------------------------------------------------------------- validation


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _revision(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not -(2**63) <= value < 2**63:
        raise ValueError(f"revision must be a 64-bit integer or None, got {value!r}")
    return int(value)


def _as_threshold(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"threshold must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"threshold must be a non-negative distance (or math.inf), got {value}")
    return value


def _as_ids(name: str, ids) -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer ids, got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds ids above the int64 range")
    return np.ascontiguousarray(array, dtype=np.int64)


def _as_codes(name: str, codes, dim: int, samples: int | None) -> np.ndarray:
    """-> (n, K, D) float32 C-contiguous, finite and within MAX_ABS_CODE; K checked when given."""
    array = np.asarray(codes)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array (items, samples, dim), got shape {array.shape}")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.shape[2] != dim:
        raise ValueError(f"{name} has dimension {array.shape[2]}, the index has dimension {dim}")
    if samples is not None and array.shape[1] != samples:
        raise ValueError(f"{name} has {array.shape[1]} samples per question, the index stores {samples}")
    if array.shape[1] < 1:
        raise ValueError(f"{name} needs at least one sample per item")
    with np.errstate(over="ignore"):
        array = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(array).all(axis=(1, 2)) | (np.abs(array) > MAX_ABS_CODE).any(axis=(1, 2))
    if bad.any():
        raise ValueError(
            f"{name} item {int(np.flatnonzero(bad)[0])} has codes that are NaN, infinite or beyond "
            f"{MAX_ABS_CODE:g} in absolute value (after conversion to float32)"
        )
    return array


def validated_write(upsert_ids, upsert_codes, remove_ids, dim: int, samples_per_item: int):
    """The arguments of a write (any index backend) checked and converted: upserts (n,) int64,
    codes (n, K, D) float32 or None, removals (m,) int64. ValueError naming what is wrong: ids and
    codes not given together, repeated ids, an id both upserted and removed."""
    if (upsert_ids is None) != (upsert_codes is None):
        raise ValueError("upsert_ids and upsert_codes go together: give both or neither")
    upserts = _as_ids("upsert_ids", upsert_ids) if upsert_ids is not None else np.empty(0, dtype=np.int64)
    removals = _as_ids("remove_ids", remove_ids) if remove_ids is not None else np.empty(0, dtype=np.int64)
    codes = None
    if upsert_codes is not None:
        codes = _as_codes("upsert_codes", upsert_codes, dim, samples_per_item)
        if len(codes) != len(upserts):
            raise ValueError(f"{len(upserts)} upsert_ids but {len(codes)} rows of upsert_codes")
    for name, ids in (("upsert_ids", upserts), ("remove_ids", removals)):
        values, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{name} repeats ids {values[counts > 1][:5].tolist()} (one entry per id per call)")
    both = np.intersect1d(upserts, removals)
    if len(both):
        raise ValueError(f"ids {both[:5].tolist()} are both upserted and removed in one call")
    return upserts, codes, removals
