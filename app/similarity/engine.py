"""The search runtime: encoder, index and a catalog of question summaries, kept in step with the
database by replaying its change log.

State is one immutable `SearchState` (encoder, index, catalog) swapped atomically by a reindex, so a
search that started on the old state finishes on it. Syncing applies the changes logged after the
index's revision; every change is idempotent, so replaying one twice is harmless, and the index
converges to the database whatever order restarts, crashes and rebuilds happen in.

The catalog (id -> text, external id, answer, metadata; see catalog.py) answers result lookups and
evaluates metadata filters without a database round trip, so searches keep answering while the
database is away; it always holds every id the index holds (added before the index, removed after
it). A filter becomes the set of ids that pass, which the index searches exactly.

A question the model cannot read (its tokenizer knows less than `min_coverage` of its visible
characters: another script, emoji) would get codes that say little about its meaning; its answer
keeps only the stored questions with the same normalised text (identical codes) and says why.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.admin.models import ServiceState
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import InvalidRequest, Unavailable
from app.model.encoder import Encoded, QuestionEncoder
from app.model.text import EmptyTextError, normalize
from app.questions import repository
from app.questions.models import CHANGE_DELETE, CHANGE_META, CHANGE_UPSERT
from app.search import IndexFileError, SimilarityIndex
from app.search.reference import Match
from app.similarity.catalog import Catalog, CatalogEntry, InvalidFilter

logger = logging.getLogger(__name__)

Summary = CatalogEntry  # text, external id, answer, metadata
LOW_COVERAGE = "low_coverage"
# Identical codes are at distance 0 (l2: exactly; cosine: within rounding of 1 - cos).
IDENTICAL_CODES_DISTANCE = 1e-9
Progress = Callable[[float], None]

DATABASE_ID_KEY = "database_id"
ACTIVE_MODEL_KEY = "active_model"


@dataclass(frozen=True)
class SearchState:
    encoder: QuestionEncoder
    index: SimilarityIndex
    catalog: Catalog = field(hash=False, compare=False)

    @property
    def revision(self) -> int:
        """Last database change applied (0 for an index that never recorded one)."""
        return self.index.revision or 0


@dataclass(frozen=True)
class SearchQuery:
    text: str
    limit: int
    threshold: float | None = None  # None: the model's calibrated default
    min_pairs: int | None = None
    filter: tuple[tuple[str, Any], ...] | None = None  # metadata key = value, all must hold

    @staticmethod
    def where(mapping: dict[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
        """A filter mapping as the hashable form SearchQuery holds (None: no filter)."""
        return None if mapping is None else tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class Hit:
    id: int
    text: str
    external_id: str | None
    distance: float
    pairs_within: int
    answer: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelSummary:
    name: str
    id: str
    metric: str
    samples: int

    @classmethod
    def of(cls, encoder: QuestionEncoder) -> ModelSummary:
        return cls(encoder.name, encoder.model_id, encoder.metric, encoder.samples_per_question)


@dataclass(frozen=True)
class SearchAnswer:
    threshold: float
    min_pairs: int
    model: ModelSummary
    hits: list[Hit]
    coverage: float = 1.0  # share of the question's visible characters the tokenizer knows
    reason: str | None = None  # why the answer is restricted (LOW_COVERAGE), None when it is not
    reason_detail: str | None = None


class InvalidQuery(InvalidRequest):
    """A query the current model cannot answer as asked (e.g. min_pairs above K x K); `field`
    names the request field at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message, field=field)


class NotReady(Unavailable):
    """The engine has no model or index loaded yet."""


class SimilarityEngine:
    def __init__(self, database: Database, settings: Settings):
        self.db = database
        self.settings = settings
        self._state: SearchState | None = None
        self._live = threading.Event()
        self._sync_lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._last_freshness_check = -math.inf
        self._saved_marker: tuple[int, int, str] | None = None  # (revision, questions, model id) on disk
        self._database_id: str | None = None

    # ------------------------------------------------------------------------------ state

    @property
    def state(self) -> SearchState:
        if self._state is None:
            raise NotReady("the search index is still loading")
        return self._state

    @property
    def loaded(self) -> bool:
        return self._state is not None

    def wait_until_loaded(self, timeout: float) -> bool:
        """Blocks until an index is live (at most `timeout` seconds); True when it is."""
        return self._live.wait(timeout)

    def _go_live(self, state: SearchState) -> None:
        self._state = state
        self._live.set()

    def database_id(self) -> str:
        """A random id stored in the database on first use: a saved index is only reused with the
        database it was built from."""
        if self._database_id is None:
            with self.db.reading() as session:
                row = session.get(ServiceState, DATABASE_ID_KEY)
            if row is None:
                try:
                    with self.db.writing() as session:
                        session.add(ServiceState(key=DATABASE_ID_KEY, value=uuid.uuid4().hex))
                except IntegrityError:
                    pass  # another process created it first
                with self.db.reading() as session:
                    row = session.get(ServiceState, DATABASE_ID_KEY)
            self._database_id = row.value
        return self._database_id

    @property
    def index_path(self) -> Path:
        return Path(self.settings.index_dir) / self.database_id()

    # ------------------------------------------------------------------------------ models

    def resolve_model(self, name: str) -> Path:
        """A model directory by name under the configured models root; names, never paths, come
        from requests."""
        root = Path(self.settings.models_root).resolve()
        candidate = (root / name).resolve()
        if candidate.parent != root or not candidate.is_dir():
            raise InvalidQuery(f"no model named {name!r} under the configured models directory", field="model")
        return candidate

    def configured_model_dir(self) -> Path:
        """The model chosen by the last reindex, unless QSIM_MODEL_DIR changed since then."""
        with self.db.reading() as session:
            row = session.get(ServiceState, ACTIVE_MODEL_KEY)
        if row is not None:
            record = json.loads(row.value)
            if record.get("configured") == str(self.settings.model_dir) and Path(record["path"]).is_dir():
                return Path(record["path"])
        return Path(self.settings.model_dir)

    def _remember_active_model(self, model_dir: Path) -> None:
        value = json.dumps({"path": str(model_dir), "configured": str(self.settings.model_dir)})
        with self.db.writing() as session:
            row = session.get(ServiceState, ACTIVE_MODEL_KEY)
            if row is None:
                session.add(ServiceState(key=ACTIVE_MODEL_KEY, value=value))
            else:
                row.value = value

    def load_encoder(self, model_dir: Path) -> QuestionEncoder:
        return QuestionEncoder.load(model_dir)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, encoder: QuestionEncoder | None = None) -> None:
        """Loads the saved index (or builds one) for `encoder` (default: the configured model),
        then reconciles it with the database. Returns when searches can be answered."""
        started = time.perf_counter()
        encoder = encoder or self.load_encoder(self.configured_model_dir())
        state = self._load_saved(encoder)
        if state is None:
            state = self.build(encoder)
        else:
            self._catch_up(state)
            self._reconcile(state)
        self._go_live(state)
        logger.info(
            "ready: model %s (%s), %d questions, revision %d, %.1f s",
            encoder.name, encoder.model_id, len(state.index), state.revision, time.perf_counter() - started,
        )

    def _load_saved(self, encoder: QuestionEncoder) -> SearchState | None:
        path = self.index_path
        if not SimilarityIndex.exists(path):
            return None
        try:
            index = SimilarityIndex.load(
                path,
                expected_model_id=encoder.model_id,
                expected_dim=encoder.latent_dim,
                expected_samples=encoder.samples_per_question,
                expected_metric=encoder.metric,
                expected_kind=self.settings.index_kind,
                device=self.settings.device,
                **self._index_options,
            )
        except IndexFileError as error:
            logger.warning("not using the saved index: %s; rebuilding from the database", error)
            return None
        with self.db.reading() as session:
            latest = repository.last_change(session)
        if (index.revision or 0) > latest:
            logger.warning(
                "saved index is at change %d but the database only has %d (restored from a backup?); rebuilding",
                index.revision, latest,
            )
            return None
        self._saved_marker = (index.revision or 0, len(index), index.model_id)
        return SearchState(encoder, index, self._load_catalog())

    def _load_catalog(self) -> Catalog:
        catalog = Catalog()
        with self.db.reading() as session:
            for batch in repository.iter_summaries(session):
                catalog.update((row[0], CatalogEntry(*row[1:])) for row in batch)
        return catalog

    @property
    def _index_options(self) -> dict:
        """Tuning of the approximate kinds; not stored in the saved index, so passed at load too."""
        return {
            "nlist": self.settings.index_nlist,
            "nprobe": self.settings.index_nprobe,
            "hnsw_m": self.settings.index_hnsw_m,
            "ef_search": self.settings.index_ef_search,
        }

    def new_index(self, encoder: QuestionEncoder) -> SimilarityIndex:
        return SimilarityIndex(
            dim=encoder.latent_dim,
            samples_per_item=encoder.samples_per_question,
            metric=encoder.metric,
            kind=self.settings.index_kind,
            device=self.settings.device,
            model_id=encoder.model_id,
            **self._index_options,
        )

    def build(self, encoder: QuestionEncoder, progress: Progress | None = None) -> SearchState:
        """A new state holding every question of the database, encoded by `encoder`. The live
        state keeps serving meanwhile; changes made during the build are replayed afterwards."""
        with self.db.reading() as session:
            revision = repository.last_change(session)
            total = max(repository.count(session), 1)
        index = self.new_index(encoder)
        catalog = Catalog()
        done = 0
        after = 0
        while True:
            # One short read transaction per page: no long-lived snapshot, and replays fix races.
            with self.db.reading() as session:
                batch = next(repository.iter_summaries(session, after_id=after), None)
            if not batch:
                break
            after = batch[-1][0]
            ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
            codes = encoder.sample([row[1] for row in batch])
            catalog.update((row[0], CatalogEntry(*row[1:])) for row in batch)
            index.add(ids, codes)
            done += len(batch)
            if progress:
                progress(min(done / total, 1.0))
        index.apply(revision=revision)
        state = SearchState(encoder, index, catalog)
        self._catch_up(state)
        return state

    def stop(self) -> None:
        if self._state is not None:
            self.save()

    # ------------------------------------------------------------------------------ syncing

    def sync(self, target: int | None = None, wait: bool = True, timeout: float | None = None) -> bool:
        """Applies the logged changes the live index lacks (at least up to change `target`).
        With wait=False (or when `timeout` seconds pass first), returns False when another thread
        is syncing. Before the index is loaded there is nothing to sync: loading replays the log."""
        if self._state is None:
            return False
        acquired = self._sync_lock.acquire(blocking=wait, timeout=-1 if timeout is None or not wait else timeout)
        if not acquired:
            return False
        try:
            state = self.state
            if target is not None and state.revision >= target:
                return True
            self._catch_up(state)
            return True
        finally:
            self._sync_lock.release()

    def refresh(self) -> None:
        """Before a search: catch up with writes acknowledged by other processes (workers, `qsim
        import`), checking at most every `sync_interval_ms` and waiting at most
        `sync_wait_seconds` for a sync already under way; when the database does not answer,
        serve what the index has."""
        now = time.monotonic()
        if now - self._last_freshness_check < self.settings.sync_interval_ms / 1000.0:
            return
        self._last_freshness_check = now
        try:
            with self.db.reading() as session:
                latest = repository.last_change(session)
            if latest > self.state.revision:
                self.sync(target=latest, timeout=self.settings.sync_wait_seconds)
        except SQLAlchemyError as error:
            logger.warning("database unavailable for the freshness check; serving the index as it is: %s", error)

    def _catch_up(self, state: SearchState, batch_size: int = 5000) -> None:
        while True:
            with self.db.reading() as session:
                changes = repository.changes_after(session, state.revision, batch_size)
                if not changes:
                    return
                last_op: dict[int, str] = {}
                for change in changes:
                    if change.op == CHANGE_META and last_op.get(change.question_id) == CHANGE_UPSERT:
                        continue  # the pending re-encode covers it
                    last_op[change.question_id] = change.op
                touched = [qid for qid, op in last_op.items() if op != CHANGE_DELETE]
                summaries = repository.summaries(session, touched)
            self._apply(state, last_op, summaries, revision=changes[-1].seq)
            if len(changes) < batch_size:
                return

    def _apply(self, state: SearchState, last_op: dict[int, str], summaries: dict[int, tuple], revision: int) -> None:
        # A row gone by now was deleted by a change we will also replay: remove it already.
        removed = [qid for qid, op in last_op.items() if op == CHANGE_DELETE or qid not in summaries]
        encode = [
            qid
            for qid, op in last_op.items()
            if qid in summaries and (op == CHANGE_UPSERT or qid not in state.index)
        ]
        state.catalog.update((qid, CatalogEntry(*summary)) for qid, summary in summaries.items())
        codes = state.encoder.sample([summaries[qid][0] for qid in encode]) if encode else None
        state.index.apply(
            upsert_ids=np.asarray(encode, dtype=np.int64) if encode else None,
            upsert_codes=codes,
            remove_ids=np.asarray(removed, dtype=np.int64) if removed else None,
            revision=revision,
        )
        for qid in removed:
            state.catalog.pop(qid, None)

    def _reconcile(self, state: SearchState) -> None:
        """Safety net after a restart: ids the database has and the index lacks are added, ids the
        database no longer has are removed."""
        in_database = np.fromiter(state.catalog.keys(), dtype=np.int64, count=len(state.catalog))
        in_index = state.index.ids()
        missing = np.setdiff1d(in_database, in_index)
        extra = np.setdiff1d(in_index, in_database)
        if len(missing) or len(extra):
            logger.warning("reconciling index with database: %d missing, %d extra", len(missing), len(extra))
            codes = state.encoder.sample([state.catalog[int(q)][0] for q in missing]) if len(missing) else None
            state.index.apply(
                upsert_ids=missing if len(missing) else None,
                upsert_codes=codes,
                remove_ids=extra if len(extra) else None,
            )

    def adopt(self, state: SearchState) -> None:
        """Makes `state` live (offline use: nothing else is serving)."""
        with self._sync_lock:
            self._go_live(state)

    def swap(self, new_state: SearchState) -> None:
        """Makes `new_state` live after replaying the changes made while it was built."""
        with self._sync_lock:
            self._catch_up(new_state)
            self._go_live(new_state)

    # ------------------------------------------------------------------------------ reindex

    def reindex(self, model_dir: Path | None = None, progress: Progress | None = None) -> SearchState:
        """Builds a new index (with another model if given) while the live one serves, swaps it in
        atomically and saves it. A failure leaves the live index untouched."""
        encoder = self.load_encoder(model_dir) if model_dir else self.state.encoder
        new_state = self.build(encoder, progress)
        self.swap(new_state)
        if model_dir:
            self._remember_active_model(model_dir)
        self.save()
        return new_state

    # ------------------------------------------------------------------------------ serving

    def search(self, queries: Sequence[SearchQuery]) -> list[SearchAnswer | InvalidQuery]:
        """Answers several queries with one encoder pass and one index search per distinct
        (threshold, min_pairs, limit, filter). A query the model cannot answer as asked gets an
        InvalidQuery in its place; the others are answered."""
        self.refresh()
        state = self.state
        encoder = state.encoder
        answers: list[SearchAnswer | InvalidQuery | None] = [None] * len(queries)
        groups: dict[tuple, list[int]] = {}
        for position, query in enumerate(queries):
            try:
                key = self._resolve(encoder, query)
            except InvalidQuery as error:
                answers[position] = error
                continue
            groups.setdefault(key, []).append(position)
        valid = [p for positions in groups.values() for p in positions]
        unique_texts = list(dict.fromkeys(queries[p].text for p in valid))
        model = ModelSummary.of(encoder)
        codes = encoder.sample(unique_texts) if unique_texts else None
        coverage = dict(zip(unique_texts, encoder.coverage(unique_texts), strict=True)) if unique_texts else {}
        row_of = {text: row for row, text in enumerate(unique_texts)}
        minimum = self.settings.min_coverage
        for (threshold, min_pairs, limit, where), positions in groups.items():
            allowed = None
            if where is not None:
                try:
                    allowed = state.catalog.allowed(dict(where))
                    if len(allowed) == len(state.catalog):
                        allowed = None  # every question passes (the catalog holds every indexed id)
                except InvalidFilter as error:
                    for p in positions:
                        answers[p] = InvalidQuery(str(error), field="filter")
                    continue
            readable = [p for p in positions if coverage[queries[p].text] >= minimum]
            unreadable = [p for p in positions if coverage[queries[p].text] < minimum]
            if readable:
                rows = [row_of[queries[p].text] for p in readable]
                found = state.index.search(
                    codes[rows], threshold=threshold, min_pairs=min_pairs, limit=limit, allowed=allowed
                )
                for position, matches in zip(readable, found, strict=True):
                    answers[position] = SearchAnswer(
                        threshold, min_pairs, model, self._hits(state, matches), coverage[queries[position].text]
                    )
            for position in unreadable:
                text = queries[position].text
                matches = self._identical(state, text, codes[[row_of[text]]], threshold, limit, allowed)
                share = coverage[text]
                answers[position] = SearchAnswer(
                    threshold, min_pairs, model, self._hits(state, matches), share, LOW_COVERAGE,
                    f"the model knows {share:.0%} of this question's characters (below QSIM_MIN_COVERAGE "
                    f"{minimum:.0%}: another script or symbols it was not trained on), so its codes say little "
                    "about its meaning; only stored questions with the same text are returned",
                )
        return answers

    @staticmethod
    def _identical(
        state: SearchState, text: str, codes: np.ndarray, threshold: float, limit: int, allowed: np.ndarray | None
    ) -> list[Match]:
        """The stored questions with the same normalised text as `text` (hence identical codes),
        with their distance and pairs within `threshold` computed as for any match."""
        samples = codes.shape[1]
        # Identical codes put the K diagonal pairs at distance 0: find those, confirm by text.
        near = state.index.search(
            codes, threshold=IDENTICAL_CODES_DISTANCE, min_pairs=samples, limit=4 * limit + 16, allowed=allowed
        )[0]
        wanted = normalize(text)
        same = []
        for match in near:
            entry = state.catalog.get(match.id)
            try:
                if entry is not None and normalize(entry.text) == wanted:
                    same.append(match.id)
            except EmptyTextError:
                continue
        if not same:
            return []
        # min_pairs 0: every one of them is returned, with its pairs counted at the threshold.
        return state.index.search(codes, threshold=threshold, min_pairs=0, limit=limit, allowed=np.asarray(same))[0]

    @staticmethod
    def _resolve(encoder: QuestionEncoder, query: SearchQuery) -> tuple:
        threshold = encoder.default_threshold if query.threshold is None else query.threshold
        min_pairs = encoder.default_min_pairs if query.min_pairs is None else query.min_pairs
        pairs = encoder.samples_per_question**2
        if not 1 <= min_pairs <= pairs:
            raise InvalidQuery(
                f"min_pairs must be between 1 and {pairs} ({encoder.samples_per_question} query codes "
                f"x {encoder.samples_per_question} stored codes)",
                field="min_pairs",
            )
        return threshold, min_pairs, query.limit, query.filter

    @staticmethod
    def _hits(state: SearchState, matches: list[Match]) -> list[Hit]:
        hits = []
        for match in matches:
            entry = state.catalog.get(match.id)
            if entry is not None:  # deleted while we searched
                hits.append(
                    Hit(match.id, entry.text, entry.external_id, match.distance, match.pairs_within, entry.answer, entry.meta)
                )
        return hits

    def encode(self, text: str) -> tuple[ModelSummary, Encoded]:
        encoder = self.state.encoder
        return ModelSummary.of(encoder), encoder.encode([text], k=encoder.samples_per_question)

    # ------------------------------------------------------------------------------ persistence

    def save(self) -> bool:
        """Saves the live index when it changed since the last save (atomically: a crash during the
        save leaves the previous copy)."""
        state = self._state
        if state is None:
            return False
        with self._save_lock:
            marker = (state.revision, len(state.index), state.index.model_id)
            if self._saved_marker == marker:
                return False
            state.index.save(self.index_path)  # the index saves one consistent snapshot
            self._saved_marker = marker
        logger.info("saved index at change %d (%d questions) to %s", marker[0], marker[1], self.index_path)
        return True

    def status(self) -> dict:
        state = self._state
        if state is None:
            return {"loaded": False}
        return {
            "loaded": True,
            "model": state.encoder.name,
            "model_id": state.encoder.model_id,
            "questions": len(state.index),
            "revision": state.revision,
            "device": state.index.device,
            "index_kind": state.index.kind,
        }
