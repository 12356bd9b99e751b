"""What the desk page needs beyond the questions API, free of HTTP: why a question matched (the K x K
pair distances against stored questions) and a 2-D map of the stored questions' latent means.

Both read the live search state the change applier publishes (encoder, index,
catalog) and never change it; texts, answers and metadata come from the catalog, so the page
keeps working while the database is away, as searches do.

The map is a PCA of the posterior means of (a deterministic sample of) the stored questions,
computed once per index revision and model: the sample is the `map_max_points` ids with the
smallest multiplicative hash, so it stays nearly the same as the collection grows, and the means of
questions already projected are kept (keyed by model, id and text) so a new revision only encodes
what changed. The projection (centre and two components) is returned with the points, so the page
projects the query's K codes onto the same plane itself.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import InvalidRequest
from app.search.reference import pair_distances
from app.similarity.search_service import ModelSummary, SearchService
from app.similarity.state import SearchState

ENCODE_CHUNK = 256  # texts per encoder call, so searches interleave with a map being built
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: a well-spread, stable order of ids
MAX_LABEL_CHARS = 80


class UnknownColorKey(InvalidRequest):
    """The map was asked to colour by a metadata key no mapped question has (a 422 about
    `color_by`, a query parameter: the route says so)."""

    def __init__(self, key: str, present: Sequence[str]):
        listed = ", ".join(repr(k) for k in present) if present else "none"
        super().__init__(f"no mapped question has the metadata key {key!r}; keys present: {listed}", field="color_by")
        self.key = key


@dataclass(frozen=True)
class Rule:
    """The model's calibrated rule, the page's starting point."""

    model: ModelSummary
    threshold: float
    min_pairs: int

    @property
    def pairs(self) -> int:
        return self.model.samples**2

    @classmethod
    def of(cls, state: SearchState) -> Rule:
        encoder = state.encoder
        return cls(ModelSummary.of(encoder), encoder.default_threshold, encoder.default_min_pairs)


@dataclass(frozen=True)
class Candidate:
    id: int
    text: str
    external_id: str | None
    answer: str | None
    metadata: dict[str, Any] | None
    distances: np.ndarray  # (K query codes, K stored codes) float64
    mean: np.ndarray  # (D,) posterior mean of the stored text

    @property
    def distance(self) -> float:
        return float(self.distances.min())


@dataclass(frozen=True)
class Explanation:
    rule: Rule
    revision: int
    query_mean: np.ndarray  # (D,)
    query_samples: np.ndarray  # (K, D): exactly the codes a search with this text uses
    candidates: list[Candidate]
    missing: list[int]  # asked-for ids the index does not hold


@dataclass(frozen=True)
class Projection:
    model_id: str
    revision: int
    total: int
    ids: np.ndarray  # (n,) int64
    xy: np.ndarray  # (n, 2) float64
    center: np.ndarray  # (D,)
    components: np.ndarray  # (2, D)
    explained: np.ndarray  # (2,) share of the variance each component explains


@dataclass(frozen=True)
class MapPoint:
    id: int
    x: float
    y: float
    text: str
    label: str | None


@dataclass(frozen=True)
class LatentMap:
    rule: Rule
    projection: Projection
    color_key: str | None
    color_keys: list[str]
    points: list[MapPoint]


def sample_ids(ids: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` of `ids`, chosen by a fixed hash (the same ids stay chosen as more arrive),
    in ascending id order."""
    if len(ids) <= limit:
        return np.sort(ids)
    with np.errstate(over="ignore"):
        keys = ids.astype(np.uint64) * _HASH
    chosen = ids[np.argpartition(keys, limit - 1)[:limit]]
    return np.sort(chosen)


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, D) -> centre (D,), components (2, D) (sign fixed: each one's largest loading positive)
    and their shares of the variance. Fewer than two distinct directions give zero components."""
    data = np.asarray(points, dtype=np.float64)
    center = data.mean(axis=0) if len(data) else np.zeros(data.shape[1])
    components = np.zeros((2, data.shape[1]))
    explained = np.zeros(2)
    if len(data) >= 2:
        centred = data - center
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        total = float((singular**2).sum())
        rank = min(2, len(singular))
        for row in range(rank):
            if singular[row] <= 1e-12:
                continue
            vector = vt[row]
            components[row] = vector if vector[np.argmax(np.abs(vector))] >= 0 else -vector
            explained[row] = float(singular[row] ** 2) / total if total > 0 else 0.0
    return center, components, explained


def _label(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:MAX_LABEL_CHARS]


class DeskService:
    def __init__(self, searches: SearchService, live_state: Callable[[], SearchState],
                 wait_until_loaded: Callable[[float], bool], max_points: int, load_wait_seconds: float):
        self.searches = searches
        self._live_state = live_state
        self._wait_until_loaded = wait_until_loaded
        self.max_points = max_points
        self.load_wait = load_wait_seconds
        self._projection: Projection | None = None
        self._means: dict[tuple[int, str], np.ndarray] = {}  # (id, text) -> mean, for one model
        self._means_model = ""
        self._build_lock = threading.Lock()

    def _state(self) -> SearchState:
        self._wait_until_loaded(self.load_wait)  # at once when loaded; NotReady (503) after
        return self._live_state()

    # ------------------------------------------------------------------------------ explain

    def explain(self, text: str, ids: Sequence[int] | None, limit: int) -> Explanation:
        """The query's K codes and, for each candidate, the K x K pair distances. Candidates are the
        given ids, or else the `limit` stored questions nearest by closest pair (the pool every
        threshold and min_pairs choose from). Runs on the search executor, in turn with searches."""
        return self.searches.call(lambda state: self._explain(state, text, ids, limit))

    def _explain(self, state: SearchState, text: str, ids: Sequence[int] | None, limit: int) -> Explanation:
        encoder = state.encoder
        encoded = encoder.encode([text], k=encoder.samples_per_question)
        query = encoded.samples[0]
        if ids is None:
            found = state.index.search(encoded.samples, threshold=math.inf, min_pairs=1, limit=limit)[0]
            wanted = [match.id for match in found]
        else:
            wanted = list(dict.fromkeys(int(i) for i in ids))
        present = [qid for qid in wanted if qid in state.index and qid in state.catalog]
        codes, present = self._codes(state, present)
        missing = [qid for qid in wanted if qid not in set(present)]
        distances = pair_distances(query, codes, encoder.metric) if present else np.empty((0, 0, 0))
        kept = [(row, qid, state.catalog.get(qid)) for row, qid in enumerate(present)]
        kept = [(row, qid, entry) for row, qid, entry in kept if entry is not None]  # deleted meanwhile
        missing += [qid for qid in present if qid not in {k[1] for k in kept}]
        present, entries = [k[1] for k in kept], [k[2] for k in kept]
        distances = distances[[k[0] for k in kept]] if kept else np.empty((0, 0, 0))
        means = encoder.encode([e.text for e in entries]).mean if entries else np.empty((0, encoder.latent_dim))
        candidates = [
            Candidate(
                id=qid,
                text=entry.text,
                external_id=entry.external_id,
                answer=entry.answer,
                metadata=entry.meta,
                distances=distances[row],
                mean=means[row],
            )
            for row, (qid, entry) in enumerate(zip(present, entries, strict=True))
        ]
        candidates.sort(key=lambda c: (float(c.distances.min()), c.id))  # nearest first, given ids too
        return Explanation(Rule.of(state), state.revision, encoded.mean[0], query, candidates, missing)

    @staticmethod
    def _codes(state: SearchState, ids: list[int]) -> tuple[np.ndarray, list[int]]:
        """Codes of the ids still in the index (one may be deleted between the check and the read)."""
        try:
            return state.index.get_codes(np.asarray(ids, dtype=np.int64)), ids
        except KeyError:
            kept, rows = [], []
            for qid in ids:
                try:
                    rows.append(state.index.get_codes(np.asarray([qid], dtype=np.int64))[0])
                    kept.append(qid)
                except KeyError:
                    continue
            dim = (state.index.samples_per_item, state.index.dim)
            return (np.stack(rows) if rows else np.empty((0, *dim), dtype=np.float32)), kept

    # ------------------------------------------------------------------------------ map

    def latent_map(self, color_by: str | None) -> LatentMap:
        """The projected sample, labelled by the metadata key `color_by` (default: the key most
        mapped questions carry; none when they carry none)."""
        state = self._state()
        projection = self._projection_for(state)
        entries = {qid: state.catalog.get(qid) for qid in projection.ids.tolist()}
        metadata = {qid: e.meta for qid, e in entries.items() if e is not None and isinstance(e.meta, dict)}
        counts: Counter[str] = Counter()
        for meta in metadata.values():
            counts.update(key for key, value in meta.items() if _label(value) is not None)
        keys = sorted(counts, key=lambda k: (-counts[k], k))
        if color_by is not None and color_by not in counts:
            raise UnknownColorKey(color_by, keys)
        key = color_by if color_by is not None else (keys[0] if keys else None)
        points = []
        for qid, (x, y) in zip(projection.ids.tolist(), projection.xy.tolist(), strict=True):
            entry = entries[qid]
            if entry is None:  # deleted since the projection was built
                continue
            label = _label(metadata.get(qid, {}).get(key)) if key else None
            points.append(MapPoint(qid, x, y, entry.text, label))
        return LatentMap(Rule.of(state), projection, key, keys, points)

    def _projection_for(self, state: SearchState) -> Projection:
        def fresh(projection: Projection | None) -> bool:
            return (
                projection is not None and projection.model_id == state.encoder.model_id
                and projection.revision == state.revision
            )

        if fresh(self._projection):
            return self._projection
        with self._build_lock:  # one build at a time; the others wait and reuse it
            if fresh(self._projection):
                return self._projection
            projection = self._build(state)
            self._projection = projection
            return projection

    def _build(self, state: SearchState) -> Projection:
        revision = state.revision  # read first: a change applied meanwhile triggers a rebuild later
        encoder = state.encoder
        all_ids = state.index.ids()
        # One catalog read per question: a delete between two reads would leave a hole.
        entries = [(qid, state.catalog.get(qid)) for qid in sample_ids(all_ids, self.max_points).tolist()]
        keys = [(qid, entry.text) for qid, entry in entries if entry is not None]
        ids = np.asarray([qid for qid, _ in keys], dtype=np.int64)
        if self._means_model != encoder.model_id:
            self._means, self._means_model = {}, encoder.model_id
        todo = [key for key in keys if key not in self._means]
        for start in range(0, len(todo), ENCODE_CHUNK):
            chunk = todo[start : start + ENCODE_CHUNK]
            means = encoder.encode([text for _, text in chunk]).mean
            self._means.update(zip(chunk, means, strict=True))
        wanted = set(keys)
        self._means = {key: mean for key, mean in self._means.items() if key in wanted}
        matrix = np.stack([self._means[key] for key in keys]) if keys else np.empty((0, encoder.latent_dim))
        center, components, explained = pca_2d(matrix)
        xy = (matrix - center) @ components.T if len(matrix) else np.empty((0, 2))
        return Projection(
            model_id=encoder.model_id,
            revision=revision,
            total=len(all_ids),
            ids=ids,
            xy=xy,
            center=center,
            components=components,
            explained=explained,
        )
