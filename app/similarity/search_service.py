"""The search service: every encode and search runs here, through one bounded executor.

Single questions, batches and `/questions/encode` all go through the same micro-batcher (one
worker thread, a bounded queue counted in questions, a timeout), so none of them can bypass the
bounds and concurrent requests share one encoder pass and one index search. A search reads the
live state the change applier publishes and nothing else: no database, no lock, no waiting on
writers.

The rule: a stored question matches when at least `min_pairs` of the K x K pairs of codes (query
sample, stored sample) are within `threshold`. A filter becomes the set of ids that pass (the
catalog evaluates it), which the index searches exactly.

A question the model cannot read (its tokenizer knows less than `min_coverage` of its visible
characters: another script, emoji) would get codes that say little about its meaning; its answer
keeps only the stored questions with the same normalised text (identical codes) and says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import InvalidRequest, Unavailable
from app.model.encoder import Encoded, QuestionEncoder
from app.model.text import EmptyTextError, normalize
from app.search.reference import Match
from app.similarity.batcher import MicroBatcher
from app.similarity.catalog import InvalidFilter
from app.similarity.state import SearchState

LOW_COVERAGE = "low_coverage"
LOAD_POLL_SECONDS = 0.1  # how often a request waiting for the index to load looks again
# Identical codes are at distance 0 (l2: exactly; cosine: within rounding of 1 - cos).
IDENTICAL_CODES_DISTANCE = 1e-9


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


class IndexUnavailable(Unavailable):
    """The index backend did not answer (Milvus down or unreachable): searches get 503, writes are
    stored and applied once it answers again."""


class InvalidQuery(InvalidRequest):
    """A query the current model cannot answer as asked (e.g. min_pairs above K x K); `field`
    names the request field at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message, field=field)


def search(state: SearchState, queries: Sequence[SearchQuery], min_coverage: float) -> list[SearchAnswer | InvalidQuery]:
    """Answers several queries on `state` with one encoder pass and one index search per distinct
    (threshold, min_pairs, limit, filter). A query the model cannot answer as asked gets an
    InvalidQuery in its place; the others are answered."""
    encoder = state.encoder
    answers: list[SearchAnswer | InvalidQuery | None] = [None] * len(queries)
    groups: dict[tuple, list[int]] = {}
    for position, query in enumerate(queries):
        try:
            key = _resolve(encoder, query)
        except InvalidQuery as error:
            answers[position] = error
            continue
        groups.setdefault(key, []).append(position)
    valid = [p for positions in groups.values() for p in positions]
    unique_texts = list(dict.fromkeys(queries[p].text for p in valid))
    model = ModelSummary.of(encoder)
    encoded = encoder.encode(unique_texts, k=encoder.samples_per_question, coverage=True) if unique_texts else None
    codes = None if encoded is None else encoded.samples
    coverage = dict(zip(unique_texts, encoded.coverage, strict=True)) if encoded is not None else {}
    row_of = {text: row for row, text in enumerate(unique_texts)}
    for (threshold, min_pairs, limit, typed_where), positions in groups.items():
        where = None if typed_where is None else tuple((key, value) for key, _, value in typed_where)
        allowed = None
        if where is not None:
            try:
                # Always the set, even when every question passes: the change applier may add a
                # question that does not pass before the index search runs.
                allowed = state.catalog.allowed(dict(where))
            except InvalidFilter as error:
                for p in positions:
                    answers[p] = InvalidQuery(str(error), field="filter")
                continue
        readable = [p for p in positions if coverage[queries[p].text] >= min_coverage]
        unreadable = [p for p in positions if coverage[queries[p].text] < min_coverage]
        if readable:
            rows = [row_of[queries[p].text] for p in readable]
            found = state.index.search(codes[rows], threshold=threshold, min_pairs=min_pairs, limit=limit, allowed=allowed)
            for position, row, matches in zip(readable, rows, found, strict=True):
                hits = _hits(state, matches, where)
                if len(hits) < len(matches) == limit:
                    hits = _refilled_hits(state, codes[[row]], threshold, min_pairs, limit, allowed, where, len(matches) - len(hits))
                answers[position] = SearchAnswer(threshold, min_pairs, model, hits, coverage[queries[position].text])
        for position in unreadable:
            text = queries[position].text
            matches = _identical(state, text, codes[[row_of[text]]], threshold, limit, allowed)
            share = coverage[text]
            answers[position] = SearchAnswer(
                threshold, min_pairs, model, _hits(state, matches, where), share, LOW_COVERAGE,
                f"the model knows {share:.0%} of this question's characters (below QSIM_MIN_COVERAGE "
                f"{min_coverage:.0%}: another script or symbols it was not trained on), so its codes say little "
                "about its meaning; only stored questions with the same text are returned",
            )
    return answers


def _identical(
    state: SearchState, text: str, codes: np.ndarray, threshold: float, limit: int, allowed: np.ndarray | None
) -> list[Match]:
    """The stored questions with the same normalised text as `text` (hence identical codes), with
    their distance and pairs within `threshold` computed as for any match."""
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


def _resolve(encoder: QuestionEncoder, query: SearchQuery) -> tuple:
    # Identical codes come out up to ~1e-16 apart (1 - cos in floating point): a threshold below
    # that floor would find no exact repeat, so "threshold 0" means identical codes.
    threshold = encoder.default_threshold if query.threshold is None else max(query.threshold, IDENTICAL_CODES_DISTANCE)
    min_pairs = encoder.default_min_pairs if query.min_pairs is None else query.min_pairs
    pairs = encoder.samples_per_question**2
    if not 1 <= min_pairs <= pairs:
        raise InvalidQuery(
            f"min_pairs must be between 1 and {pairs} ({encoder.samples_per_question} query codes "
            f"x {encoder.samples_per_question} stored codes)",
            field="min_pairs",
        )
    # Grouped by value *and* type: Python's True == 1 == 1.0 (with equal hashes) would answer a
    # {"flag": true} filter and a {"flag": 1} one, batched together, with the first one's.
    typed = None if query.filter is None else tuple((key, type(value), value) for key, value in query.filter)
    return threshold, min_pairs, query.limit, typed


# A search that met a change half-applied (catalog and index are updated one after the other) is
# searched again this many times, asking for as many more as it lost, so that it still fills its limit.
REFILL_ATTEMPTS = 3


def _refilled_hits(
    state: SearchState, codes: np.ndarray, threshold: float, min_pairs: int, limit: int,
    allowed: np.ndarray | None, where: tuple[tuple[str, Any], ...] | None, lost: int,
) -> list[Hit]:
    """The hits of one query whose first search lost `lost` of its `limit` matches to questions
    deleted or changed while it ran: searched again with room for them, up to REFILL_ATTEMPTS times."""
    hits: list[Hit] = []
    for _ in range(REFILL_ATTEMPTS):
        asked = limit + lost
        matches = state.index.search(codes, threshold=threshold, min_pairs=min_pairs, limit=asked, allowed=allowed)[0]
        hits = _hits(state, matches, where)
        if len(hits) >= limit or len(matches) < asked:
            break
        lost = asked - len(hits)
    return hits[:limit]


def _hits(state: SearchState, matches: list[Match], where: tuple[tuple[str, Any], ...] | None = None) -> list[Hit]:
    """The matches as results, read from the catalog now: without those deleted while we searched
    and, under a filter, those whose metadata no longer passes it (changed while we searched)."""
    wanted = None if where is None else dict(where)
    hits = []
    for match in matches:
        entry = state.catalog.get(match.id)
        if entry is not None and (wanted is None or state.catalog.passes(match.id, wanted)):
            hits.append(Hit(match.id, entry.text, entry.external_id, match.distance, match.pairs_within, entry.answer,
                            entry.meta))
    return hits


@dataclass(frozen=True)
class _Search:
    queries: tuple[SearchQuery, ...]


@dataclass(frozen=True)
class _Call:
    work: Callable[[SearchState], Any]


class SearchService:
    """Owns all encode and search work: one bounded executor for single questions, batches and
    encodes. `live_state()` gives the state to work on (the change applier's)."""

    def __init__(
        self,
        live_state: Callable[[], SearchState],
        wait_until_loaded: Callable[[float], bool],
        *,
        min_coverage: float,
        max_batch: int,
        max_wait_seconds: float,
        max_queue: int,
        timeout_seconds: float,
        load_wait_seconds: float,
        on_batch: Callable[[int], None] | None = None,
        backend_errors: tuple[type[BaseException], ...] = (),
    ):
        self._live_state = live_state
        self._wait_until_loaded = wait_until_loaded
        self.min_coverage = min_coverage
        self.timeout = timeout_seconds
        self.load_wait = load_wait_seconds
        self._backend_errors = backend_errors
        self.executor: MicroBatcher = MicroBatcher(
            self._process, max_batch=max_batch, max_wait_seconds=max_wait_seconds, max_queue=max_queue,
            name="search-executor", on_batch=on_batch,
        )

    @property
    def depth(self) -> int:
        return self.executor.depth

    def stop(self) -> None:
        self.executor.stop()

    def _process(self, work: Sequence[_Search | _Call]) -> list:
        try:
            return self._process_on(self._live_state(), work)
        except self._backend_errors as error:
            raise self._unavailable(error) from error

    @staticmethod
    def _unavailable(error: BaseException) -> IndexUnavailable:
        return IndexUnavailable(f"the index backend did not answer ({type(error).__name__}); retry shortly")

    def _process_on(self, state: SearchState, work: Sequence[_Search | _Call]) -> list:
        """Every item of the batch on `state` (NotReady reaches every caller of this batch)."""
        searches = [item for item in work if isinstance(item, _Search)]
        flat = [query for item in searches for query in item.queries]
        found = iter(search(state, flat, self.min_coverage)) if flat else iter(())
        results = []
        for item in work:
            if isinstance(item, _Search):
                results.append([next(found) for _ in item.queries])
            else:
                try:
                    results.append(item.work(state))
                except Exception as error:  # this caller's alone
                    results.append(self._unavailable(error) if isinstance(error, self._backend_errors) else error)
        return results

    @staticmethod
    def _raise_invalid(answers: list) -> list[SearchAnswer]:
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    async def _loaded_async(self) -> None:
        """Waits up to the load wait for an index, on the event loop: a thread per waiting request
        (the loop's small default pool) made the waits queue behind each other."""
        if self._wait_until_loaded(0):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.load_wait
        pause = 0.01
        while not self._wait_until_loaded(0) and loop.time() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, LOAD_POLL_SECONDS)

    async def similar_async(self, query: SearchQuery) -> SearchAnswer:
        """One question, micro-batched with whatever else is being asked right now; awaited on the
        event loop (no thread held while the batch runs)."""
        await self._loaded_async()
        answers = await self.executor.submit_async(_Search((query,)), timeout=self.timeout)
        return self._raise_invalid(answers)[0]

    async def similar_many_async(self, queries: Sequence[SearchQuery]) -> list[SearchAnswer]:
        """Many questions: one item of the queue, weighing as many questions as it holds."""
        await self._loaded_async()
        answers = await self.executor.submit_async(_Search(tuple(queries)), timeout=self.timeout, weight=len(queries))
        return self._raise_invalid(answers)

    async def encode_async(self, text: str) -> tuple[ModelSummary, Encoded]:
        await self._loaded_async()
        return await self.executor.submit_async(_Call(lambda state: _encode(state, text)), timeout=self.timeout)

    def call(self, work: Callable[[SearchState], Any]) -> Any:
        """Runs `work(live state)` on the executor, in turn with searches (the desk page's
        explanations): bounded and timed like them."""
        self._wait_until_loaded(self.load_wait)
        return self.executor.submit(_Call(work), timeout=self.timeout)


def _encode(state: SearchState, text: str) -> tuple[ModelSummary, Encoded]:
    encoder = state.encoder
    return ModelSummary.of(encoder), encoder.encode([text], k=encoder.samples_per_question)
