"""MilvusIndex: the similarity index on Milvus (embedded milvus-lite, a standalone server or a
cluster), with the same contract as `SimilarityIndex` and answers equal to `reference.brute_force_search`.

Layout. One collection per index build; every stored question is K rows:

    pk           INT64 primary key   question_id * K + sample   (upserts and deletes by key)
    question_id  INT64
    sample       INT16               0..K-1 (`sample == 0` is one row per question: counts, ids())
    code         FLOAT_VECTOR        the code, float32 (padded with one zero to dim 2 when dim is 1:
                                     Milvus wants dim >= 2; a zero coordinate changes no distance)
    exponent     INT16               cosine only: the code is stored times 2^exponent (exact) so that
                                     tiny codes survive the engine's float32 normalisation
    meta         JSON                filter fields (optional; searches may add a Milvus expression)

The index type is FLAT (exact). Collection properties hold what a replica needs to trust it: the
format, model id, dimension, K, metric and the change-log revision the data has reached. The revision
is written after the data of each `apply`, so it is a lower bound of what is applied: replaying the
log from it is idempotent (upserts and deletes by primary key) and converges.

The rule (see reference.py): per query sample, a Milvus *range search* proposes the stored samples
within a radius slightly wider than the threshold (Milvus compares float32 distances: squared
Euclidean for L2, strictly below the radius; cosine *similarity* for COSINE, strictly above it), so
every pair the float64 reference counts is proposed. Candidate questions with at least `min_pairs`
proposed pairs are re-evaluated exactly: their K stored codes are read back (by primary key) and
`reference.pair_distances` decides, in float64, like the FAISS index does. Results therefore equal
the reference bit for bit.

Engine limits are never a silent cut. A range search returns at most `limit` hits per vector and
Milvus caps `limit` at 16384 (`topk_cap`). A vector whose answer comes back full is asked again with
a larger limit (x8, from `first_limit`: 256 on milvus-lite, the cap on a server) and, once at the
cap, split by question-id ranges (at the median id of the hits, each half searched with a
`question_id` range filter) until every part comes back below the cap: a page-by-partition that is
exact on any engine whose range search returns the nearest hits within the radius. (milvus-lite 3.x
does range search on FLAT, radius and range_filter, but as a top-(5 x limit) search filtered by the
radius afterwards: paging with range_filter bands would lose hits after the fifth page; id-range
partitions do not, since every part starts from its own nearest hits.) Every such event is counted in
`counters` (`truncated`, `split_requests`), so `/metrics` can show it; the last resort, an exact scan
of the stored codes, is counted in `scans`.

min_pairs = 0 or threshold = inf make every question a match (a ranking): top-k searches per query
sample with k growing until the k-th distance (less the float32 error bound) is beyond the `limit`-th
exact distance found, which proves that no unseen question can rank in; at the cap, an exact scan.

`allowed` (ids that pass the service's filter): a few (<= `subset_max_questions`) are read by key and
evaluated directly; up to `expr_max_ids` become a Milvus `question_id in [...]` expression; beyond,
the searches run unfiltered and hits outside the set are dropped client-side (still exact: the hits
are complete, paging included). Large filtered sets belong in `meta` and `expr` (Milvus evaluates).

Aliases: an index opened on an alias resolves it once per search (and per write) and sends every
request of that call to the one collection it named, so a switch mid-search cannot mix candidates
from one collection with codes read from the other.

Consistency: collections are created with consistency level Strong, so a search sees every write
that returned before it. One `apply` is not atomic across rows (Milvus has no transactions): a search
running during a write may see some of its questions updated and not others; each question's K rows
are written in one request. Writers: one per collection (the change applier, see docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.search.bounds import UNDERFLOW_FLOOR, unit_rows
from app.search.index import (
    _as_codes,
    _as_ids,
    _as_threshold,
    _non_negative_int,
    _positive_int,
    _revision,
    validated_write,
)
from app.search.reference import METRICS, Match, brute_force_search, order_matches, pair_distances
from app.search.refine import Rule
from app.search.storage import IndexFileError

log = logging.getLogger(__name__)

FORMAT = "qsim-milvus-index"
FORMAT_VERSION = 1
# Milvus's default cap on a search's limit (topk) and on nq x topk; configurable on a server.
MILVUS_TOPK_CAP = 16384
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The engine's arithmetic is unknown (CPU SIMD, BLAS expansion, GPU): its float32 distances are
# trusted to within the error bound of FloatErrorModel with this unit roundoff (16x float32's).
ENGINE_UNIT_ROUNDOFF = 2.0**-20
# Float64 margin on the reference side (its own rounding is ~1e-16 relative).
REFERENCE_MARGIN = 1e-9
METRIC_TYPES = {"l2": "L2", "cosine": "COSINE"}
PROPERTY = "qsim."
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


class MilvusIndexError(IndexFileError):
    """A Milvus collection that cannot be served: missing, not a qsim index, or built for another
    model, dimension, K or metric (an IndexFileError, so callers that refuse a mismatched saved
    index refuse this one the same way)."""


@dataclass
class Counters:
    """Monotonic event counts, for metrics. Thread-safe increments."""

    searches: int = 0
    engine_searches: int = 0  # search requests sent to Milvus
    truncated: int = 0  # vectors whose answer came back full (at the requested limit) and was asked again
    split_requests: int = 0  # requests made to page a result at the cap by question-id ranges
    scans: int = 0  # exact scans of the stored codes (cap fallback, or a cosine threshold >= 1)
    subset_reads: int = 0  # filtered searches answered by reading the allowed questions' codes
    fetched_questions: int = 0  # candidate questions whose codes were read back for exact evaluation
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def engine_gamma(dim: int) -> float:
    """FloatErrorModel's gamma at ENGINE_UNIT_ROUNDOFF: a float32 squared L2 distance is within
    gamma * (|x| + |y|)^2 of the exact one, a float32 cosine of unit vectors within ~4 gamma."""
    nu = (dim + 8) * ENGINE_UNIT_ROUNDOFF
    return 2.0 * nu / (1.0 - nu)


def connect(uri: str, token: str | None = None, **kwargs):
    """A MilvusClient for `uri`: a path ending in .db is embedded milvus-lite (its folder must
    exist), http(s)://host:19530 a server. Errors name the URI."""
    try:
        from pymilvus import MilvusClient
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the Milvus backend needs pymilvus (and milvus-lite for .db files): pip install 'qsim[milvus]'") from error
    try:
        return MilvusClient(uri=str(uri), token=token or "", **kwargs)
    except Exception as error:
        raise MilvusIndexError(f"cannot connect to Milvus at {uri}: {error}") from error


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} must be a Milvus name (a letter or _, then letters, digits, _), got {name!r}")
    return name


def collection_name_for(alias: str, model_id: str, stamp: int | None = None) -> str:
    """A fresh collection name for a build behind `alias`: <alias>__<model id>__<time in ms>."""
    model = re.sub(r"[^A-Za-z0-9_]", "_", model_id)
    return _check_name("collection", f"{alias}__{model}__{stamp if stamp is not None else time.time_ns() // 1_000_000}")


def resolve(client, name: str) -> str:
    """The collection `name` refers to (itself, or the collection an alias points at)."""
    return client.describe_collection(name)["collection_name"]


def alias_target(client, alias: str) -> str | None:
    """The collection `alias` points at, or None when there is no such alias."""
    if alias not in (client.list_aliases().get("aliases") or []):
        return None
    return client.describe_alias(alias)["collection_name"] or None


def switch_alias(client, alias: str, collection: str) -> str | None:
    """Points `alias` at `collection` (creates the alias the first time); returns the collection it
    pointed at before, or None. Milvus switches an alias atomically: a search through the alias runs
    on the old collection or on the new one, never on neither."""
    _check_name("alias", alias)
    previous = alias_target(client, alias)
    if previous is None:
        client.create_alias(collection, alias)
    elif previous != collection:
        client.alter_alias(collection, alias)
    return previous


def create_for_alias(
    uri: str | None, alias: str, dim: int, samples_per_item: int, metric: str, model_id: str, *, client=None, **options
) -> MilvusIndex:
    """A new, empty collection for a build served behind `alias` (named by `collection_name_for`).
    The first build also creates the alias, pointing at it; later builds leave the alias alone until
    the caller, caught up with the change log, calls `switch_alias` (then drops the old collection)."""
    _check_name("alias", alias)
    index = MilvusIndex(uri, collection_name_for(alias, model_id), dim, samples_per_item, metric, model_id,
                        client=client, **options)
    if alias_target(index.client, alias) is None:
        switch_alias(index.client, alias, index.name)
    return index


class MilvusIndex:
    """Stored questions (integer ids, K codes of dimension `dim`) in one Milvus collection, searched
    by the pairs rule exactly (see the module docstring). Same reading, writing and search methods as
    `SimilarityIndex`; the collection is the saved state (`exists`, `load`; `save` flushes).

    uri: a .db path (milvus-lite) or a server URI; or pass `client` (a MilvusClient) to share one.
    collection: the collection or alias name. A new collection is created unless it exists;
    an existing one is opened only with `exists_ok=True` (and checked like `load` does).
    Tuning (keyword-only): topk_cap (Milvus's limit cap; tests set it tiny), first_limit (limit of a
    first range search), vectors_per_request, subset_max_questions, expr_max_ids, fetch_batch,
    write_batch.
    """

    kind = "exact"

    def __init__(
        self,
        uri: str | None,
        collection: str,
        dim: int,
        samples_per_item: int,
        metric: str = "l2",
        model_id: str = "",
        *,
        client=None,
        token: str | None = None,
        exists_ok: bool = False,
        topk_cap: int = MILVUS_TOPK_CAP,
        first_limit: int | None = None,
        vectors_per_request: int | None = None,
        subset_max_questions: int = 2048,
        expr_max_ids: int = 16384,
        fetch_batch: int = 4096,
        write_batch: int = 2048,
        _open_only: bool = False,
    ):
        self.dim = _positive_int("dim", dim)
        self.samples_per_item = _positive_int("samples_per_item", samples_per_item)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if not isinstance(model_id, str) or not model_id or any(c.isspace() for c in model_id):
            raise ValueError(f"model_id must be a non-empty string without spaces, got {model_id!r}")
        self.metric = metric
        self.model_id = model_id
        self.name = _check_name("collection", collection)
        self.topk_cap = _positive_int("topk_cap", topk_cap)
        if self.topk_cap <= self.samples_per_item:
            raise ValueError(f"topk_cap must exceed samples_per_item ({self.samples_per_item}), got {topk_cap}")
        self.uri = str(uri) if uri is not None else None
        self.lite = self.uri is not None and self.uri.endswith(".db")
        # A first range search asks for this many hits per vector (more are asked for when it comes
        # back full). milvus-lite materialises 5x the limit in Python, so it starts small; a server's
        # range search costs about the same at any limit, so it starts at the cap. A ranking starts
        # at max(first, limit * K) hits.
        if first_limit is None:
            self.first_limit = 256 if self.lite else self.topk_cap
            self._rank_first = 64
        else:
            self.first_limit = self._rank_first = min(_positive_int("first_limit", first_limit), self.topk_cap)
        self.first_limit = min(self.first_limit, self.topk_cap)
        self.subset_max_questions = _non_negative_int("subset_max_questions", subset_max_questions)
        self.expr_max_ids = _non_negative_int("expr_max_ids", expr_max_ids)
        self.fetch_batch = _positive_int("fetch_batch", fetch_batch)
        self.write_batch = _positive_int("write_batch", write_batch)
        self._owns_client = client is None
        self._client = client if client is not None else connect(self.uri, token)
        if self.uri is None:  # a shared client: ask the server what it is
            self.lite = _is_lite(self._client)
            if first_limit is None and self.lite:
                self.first_limit = min(256, self.topk_cap)
        self.device = "milvus-lite" if self.lite else "milvus"
        if vectors_per_request is None:
            # milvus-lite computes L2 from differences in one (vectors x rows x dim) array per request;
            # a server's answer to vectors x the cap (16 x 16384 hits) stays far below gRPC's 64 MB.
            vectors_per_request = (8 if metric == "l2" else 256) if self.lite else 16
        self.vectors_per_request = _positive_int("vectors_per_request", vectors_per_request)
        self._engine_dim = max(self.dim, 2)
        self._metric_type = METRIC_TYPES[metric]
        self._gamma = engine_gamma(self._engine_dim)
        self._write_lock = threading.RLock()
        self._pins = threading.local()
        self._on_alias = False
        self.counters = Counters()
        if self._client.has_collection(self.name):
            if not (exists_ok or _open_only):
                raise MilvusIndexError(f"Milvus collection {self.name!r} already exists (open it with MilvusIndex.load)")
            self._verify({"model_id": model_id, "dim": dim, "samples_per_item": samples_per_item, "metric": metric})
            self._on_alias = resolve(self._client, self.name) != self.name
            self._ensure_loaded()
        elif _open_only:
            raise MilvusIndexError(f"no Milvus collection or alias {self.name!r} at {self.uri or 'the given client'}")
        else:
            self._create()

    # ------------------------------------------------------------------------------ lifecycle

    def _create(self) -> None:
        from pymilvus import DataType

        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("question_id", DataType.INT64)
        schema.add_field("sample", DataType.INT16)
        schema.add_field("code", DataType.FLOAT_VECTOR, dim=self._engine_dim)
        schema.add_field("exponent", DataType.INT16)
        schema.add_field("meta", DataType.JSON)
        properties = {
            PROPERTY + "format": FORMAT,
            PROPERTY + "format_version": str(FORMAT_VERSION),
            PROPERTY + "model_id": self.model_id,
            PROPERTY + "dim": str(self.dim),
            PROPERTY + "samples_per_item": str(self.samples_per_item),
            PROPERTY + "metric": self.metric,
            PROPERTY + "revision": "",
        }
        client.create_collection(self.name, schema=schema, consistency_level="Strong", properties=properties)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="code", index_name="code", index_type="FLAT", metric_type=self._metric_type)
        # pymilvus's own wait polls every 0.5 s; an empty collection's index is ready at once.
        client.create_index(self.name, index_params, sync=False)
        deadline = time.monotonic() + 60
        while True:
            state = str(client.describe_index(self.name, "code").get("state", "Finished"))
            if "Finished" in state or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        client.load_collection(self.name)

    def _ensure_loaded(self) -> None:
        try:
            state = str(self._client.get_load_state(self.name).get("state", ""))
        except Exception:
            state = ""
        if "Loaded" not in state:
            self._client.load_collection(self.name)

    def _properties(self) -> dict[str, str]:
        return dict(self._client.describe_collection(self.name).get("properties") or {})

    def _verify(self, expected: dict[str, Any]) -> dict[str, str]:
        """Checks the collection's properties against what the caller expects; MilvusIndexError
        naming the mismatch otherwise."""
        where = f"Milvus collection {self.name!r}"
        properties = self._properties()
        if properties.get(PROPERTY + "format") != FORMAT:
            raise MilvusIndexError(f"{where} does not hold a qsim index (format {properties.get(PROPERTY + 'format')!r})")
        if properties.get(PROPERTY + "format_version") != str(FORMAT_VERSION):
            raise MilvusIndexError(
                f"{where} has format version {properties.get(PROPERTY + 'format_version')}, this qsim reads "
                f"version {FORMAT_VERSION}: rebuild the index"
            )
        stored = {
            "model_id": properties.get(PROPERTY + "model_id"),
            "dim": _int_or_none(properties.get(PROPERTY + "dim")),
            "samples_per_item": _int_or_none(properties.get(PROPERTY + "samples_per_item")),
            "metric": properties.get(PROPERTY + "metric"),
        }
        if expected.get("model_id") is not None and stored["model_id"] != expected["model_id"]:
            raise MilvusIndexError(
                f"{where} was built by model {stored['model_id']}, this service runs model "
                f"{expected['model_id']}: rebuild the index with the current model"
            )
        wording = {"dim": "latent dimension", "samples_per_item": "samples per question (K)", "metric": "metric"}
        for key, words in wording.items():
            if expected.get(key) is not None and stored[key] != expected[key]:
                raise MilvusIndexError(f"{where} has {words} {stored[key]!r}, expected {expected[key]!r}")
        return properties

    @staticmethod
    def exists(uri: str | None, collection: str, *, client=None, token: str | None = None) -> bool:
        """Whether `collection` (a collection or an alias) exists and holds a qsim index."""
        own = client is None
        client = client if client is not None else connect(uri, token)
        try:
            if not client.has_collection(collection):
                return False
            properties = client.describe_collection(collection).get("properties") or {}
            return properties.get(PROPERTY + "format") == FORMAT
        finally:
            if own:
                client.close()

    @classmethod
    def load(
        cls,
        uri: str | None,
        collection: str,
        *,
        expected_model_id: str | None = None,
        expected_dim: int | None = None,
        expected_samples: int | None = None,
        expected_metric: str | None = None,
        resolve_alias: bool = False,
        client=None,
        token: str | None = None,
        **options,
    ) -> MilvusIndex:
        """Opens an existing collection (or alias) and checks it against what the caller expects,
        refusing a mismatch with a MilvusIndexError that names it, like `SimilarityIndex.load`.
        resolve_alias: pin the collection the alias points at now (a replica whose encoder must match
        the codes does this; an index on the alias itself follows every switch)."""
        own = client is None
        client = client if client is not None else connect(uri, token)
        if not client.has_collection(collection):
            if own:
                client.close()
            raise MilvusIndexError(f"no Milvus collection or alias {collection!r} at {uri or 'the given client'}")
        name = resolve(client, collection) if resolve_alias else collection
        properties = client.describe_collection(name).get("properties") or {}
        try:
            index = cls(
                uri, name,
                _int_or_none(properties.get(PROPERTY + "dim")) or 1,
                _int_or_none(properties.get(PROPERTY + "samples_per_item")) or 1,
                properties.get(PROPERTY + "metric") if properties.get(PROPERTY + "metric") in METRICS else "l2",
                properties.get(PROPERTY + "model_id") or "unknown",
                client=client, _open_only=True, **options,
            )
            index._owns_client = own
            index._verify({
                "model_id": expected_model_id, "dim": expected_dim,
                "samples_per_item": expected_samples, "metric": expected_metric,
            })
        except Exception:
            if own:
                client.close()
            raise
        return index

    def save(self, directory=None) -> str:
        """The collection is the saved state: flushes it (durable segments) and returns its name.
        `directory` is accepted for the SimilarityIndex signature and ignored."""
        self._client.flush(self.name)
        return self.name

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def drop(self) -> None:
        """Deletes the collection (a retired build)."""
        self._client.drop_collection(self.name)

    @property
    def client(self):
        return self._client

    @property
    def _target(self) -> str:
        return getattr(self._pins, "name", None) or self.name

    @contextlib.contextmanager
    def _pinned(self):
        """Within it, every request of this thread goes to one collection: the one the alias names
        when it starts. A search or write spans several requests; through an alias switched meanwhile
        they would otherwise mix two collections (candidates from one, codes read from the other)."""
        if not self._on_alias or getattr(self._pins, "name", None):
            yield
            return
        self._pins.name = resolve(self._client, self.name)
        try:
            yield
        finally:
            self._pins.name = None

    @property
    def collection(self) -> str:
        """The collection this index reads now (the alias's target when opened on an alias)."""
        return resolve(self._client, self.name)

    # ---------------------------------------------------------------------------------- reading

    @property
    def revision(self) -> int | None:
        """The change-log revision stored in Milvus (read on every call: a follower sees the
        applier's progress)."""
        value = self._properties().get(PROPERTY + "revision", "")
        return int(value) if value not in ("", None) else None

    def __len__(self) -> int:
        rows = self._client.query(self._target, filter="sample == 0", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __contains__(self, question_id: object) -> bool:
        if not isinstance(question_id, int | np.integer) or isinstance(question_id, bool):
            return False
        if not self._id_in_range(int(question_id)):
            return False
        return bool(self._client.get(self._target, ids=[int(question_id) * self.samples_per_item], output_fields=["pk"]))

    def ids(self) -> np.ndarray:
        """All stored ids, ascending. (n,) int64."""
        with self._pinned():
            found = [row["question_id"] for row in self._iterate("sample == 0", ["question_id"])]
        return np.sort(np.asarray(found, dtype=np.int64))

    def get_codes(self, ids) -> np.ndarray:
        """ids (m,) -> their codes (m, K, D) float32; KeyError naming ids that are not stored."""
        wanted = _as_ids("ids", ids)
        with self._pinned():
            codes = self._fetch(wanted)
        missing = [int(i) for i in wanted.tolist() if int(i) not in codes]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the index, e.g. {missing[:5]}")
        out = np.empty((len(wanted), self.samples_per_item, self.dim), dtype=np.float32)
        for row, qid in enumerate(wanted.tolist()):
            out[row] = codes[int(qid)]
        return out

    def memory_bytes(self) -> int:
        """Host memory this process holds for the index (the codes live in Milvus)."""
        return 0

    def wait_for_merges(self, timeout: float | None = None) -> bool:
        return True  # Milvus compacts on its own

    def compact(self) -> None:
        """Nothing to do: Milvus merges its own segments."""

    merge_error = None

    # ---------------------------------------------------------------------------------- writing

    def apply(self, upsert_ids=None, upsert_codes=None, remove_ids=None, revision: int | None = None, *, metadata=None) -> None:
        """upsert_ids (n,) with upsert_codes (n, K, D): store these questions, replacing all K codes
        of ids already stored (an upsert by primary key, so replaying it changes nothing).
        remove_ids (m,): delete these (unknown ids are ignored). revision: the change-log checkpoint,
        written after the data (None keeps the current one). metadata: optional one dict per upsert
        (the `meta` filter field). Not atomic across rows: see the module docstring."""
        self._apply(upsert_ids, upsert_codes, remove_ids, revision, metadata)

    def add(self, ids, codes, revision: int | None = None, *, metadata=None) -> None:
        self._apply(ids, codes, None, revision, metadata)

    def remove(self, ids, revision: int | None = None) -> int:
        """Deletes questions; returns how many of `ids` were stored."""
        return self._apply(None, None, ids, revision, None)

    def _apply(self, upsert_ids, upsert_codes, remove_ids, revision, metadata) -> int:
        upserts, codes, removals = self._validate_write(upsert_ids, upsert_codes, remove_ids)
        if revision is not None:
            revision = _revision(revision)
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != len(upserts):
                raise ValueError(f"{len(upserts)} upsert_ids but {len(metadata)} metadata entries")
            for entry in metadata:
                if not isinstance(entry, dict):
                    raise ValueError(f"metadata entries must be dicts, got {type(entry).__name__}")
                json.dumps(entry)  # refuses what JSON cannot hold, naming it
        k = self.samples_per_item
        with self._write_lock, self._pinned():
            removed = 0
            if len(removals):
                removed = len(self._fetch_present(removals))
            per_batch = max(1, self.write_batch // k)
            for start in range(0, len(upserts), per_batch):
                rows = []
                for offset, qid in enumerate(upserts[start : start + per_batch].tolist()):
                    meta = metadata[start + offset] if metadata is not None else {}
                    block, exponents = self._stored_form(codes[start + offset])
                    rows.extend(
                        {"pk": qid * k + s, "question_id": qid, "sample": s, "code": block[s],
                         "exponent": exponents[s], "meta": meta}
                        for s in range(k)
                    )
                self._client.upsert(self._target, rows)
            for start in range(0, len(removals), per_batch):
                chunk = removals[start : start + per_batch]
                pks = (chunk[:, None] * k + np.arange(k, dtype=np.int64)[None, :]).ravel().tolist()
                self._client.delete(self._target, ids=pks)
            if revision is not None:
                self._client.alter_collection_properties(self._target, {PROPERTY + "revision": str(revision)})
        return removed

    def set_revision(self, revision: int) -> None:
        self._apply(None, None, None, revision, None)

    def _validate_write(self, upsert_ids, upsert_codes, remove_ids):
        upserts, codes, removals = validated_write(upsert_ids, upsert_codes, remove_ids, self.dim, self.samples_per_item)
        bad = [int(i) for i in upserts.tolist() if not self._id_in_range(int(i))]
        if bad:
            raise ValueError(f"upsert_ids {bad[:5]} are outside the range a Milvus primary key id*K+s can hold")
        # An id no primary key can hold is not stored: removing it removes nothing.
        removals = np.asarray([i for i in removals.tolist() if self._id_in_range(int(i))], dtype=np.int64)
        return upserts, codes, removals

    def _id_in_range(self, qid: int) -> bool:
        k = self.samples_per_item
        return qid * k >= INT64_MIN and qid * k + k - 1 <= INT64_MAX

    def _stored_form(self, codes: np.ndarray) -> tuple[list[list[float]], list[int]]:
        """(K, D) float32 codes -> the vectors Milvus stores and their exponents e (code = vector * 2^-e).
        Cosine ignores scale, so a small cosine code is stored scaled up by a power of two (exact in
        float32: no bit is lost scaling up) to a largest component in [1, 2): the engine's float32
        normalisation would otherwise underflow (a code of 1e-45s counts as a zero vector there, not
        in the float64 reference). Read back, vector * 2^-e is the original code, bit for bit."""
        exponents = np.zeros(len(codes), dtype=np.int32)
        if self.metric == "cosine":
            largest = np.abs(codes).max(axis=1).astype(np.float64)
            positive = largest > 0
            exponents[positive] = np.maximum(0, -np.floor(np.log2(largest[positive]))).astype(np.int32)
            codes = np.ldexp(codes, exponents[:, None]).astype(np.float32)
        return self._engine_vectors(codes), exponents.tolist()

    def _engine_queries(self, vectors) -> list[list[float]]:
        """Query samples for Milvus. Cosine ignores scale, so they go normalised (in float64, then
        rounded: the error bound allows for it): a tiny query whose float32 norm would underflow in
        the engine is not mistaken for a zero vector."""
        array = np.asarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            array = unit_rows(array).astype(np.float32)
        return self._engine_vectors(array)

    def _engine_vectors(self, codes: np.ndarray) -> list[list[float]]:
        """(m, D) float32 -> rows for Milvus (padded to dim 2 when dim is 1)."""
        if self._engine_dim != self.dim:
            codes = np.concatenate([codes, np.zeros((len(codes), self._engine_dim - self.dim), dtype=np.float32)], axis=1)
        return codes.astype(np.float32).tolist()

    # ------------------------------------------------------------------------------- reading rows

    def _iterate(self, expr: str, fields: list[str], batch: int = 8192):
        iterator = self._client.query_iterator(self._target, batch_size=batch, filter=expr, output_fields=fields)
        try:
            while True:
                rows = iterator.next()
                if not rows:
                    return
                yield from rows
        finally:
            iterator.close()

    def _fetch_present(self, qids: np.ndarray) -> list[int]:
        present = []
        for start in range(0, len(qids), self.fetch_batch):
            chunk = qids[start : start + self.fetch_batch]
            rows = self._client.get(self._target, ids=(chunk * self.samples_per_item).tolist(), output_fields=["question_id"])
            present.extend(int(row["question_id"]) for row in rows)
        return present

    def _fetch(self, qids, expr: str | None = None) -> dict[int, np.ndarray]:
        """qids -> {qid: (K, D) float32} for the questions with all K rows stored (and passing `expr`)."""
        k = self.samples_per_item
        qids = np.unique(np.asarray(qids, dtype=np.int64))
        # Ids whose keys id*K+s would overflow int64 cannot be stored (and must not wrap onto others).
        qids = qids[(qids >= INT64_MIN // k) & (qids <= (INT64_MAX - k + 1) // k)]
        per_request = max(1, self.fetch_batch // k)
        out: dict[int, np.ndarray] = {}
        offsets = np.arange(k, dtype=np.int64)
        for start in range(0, len(qids), per_request):
            chunk = qids[start : start + per_request]
            if expr:
                rows = self._client.query(
                    self._target, filter=f"({_in_expr(chunk)}) and ({expr})", output_fields=["pk", "question_id", "code", "exponent"]
                )
            else:
                rows = self._client.get(self._target, ids=(chunk[:, None] * k + offsets).ravel().tolist(), output_fields=["pk", "question_id", "code", "exponent"])
            out.update(self._assemble(rows))
        self.counters.add(fetched_questions=len(out))
        return out

    def _assemble(self, rows) -> dict[int, np.ndarray]:
        k = self.samples_per_item
        grouped: dict[int, dict[int, Any]] = defaultdict(dict)
        for row in rows:
            qid = int(row["question_id"])
            grouped[qid][int(row["pk"]) - qid * k] = (row["code"], int(row.get("exponent") or 0))
        out = {}
        for qid, samples in grouped.items():
            if len(samples) != k:
                continue  # a question mid-write or mid-delete: not (or no longer) stored whole
            block = np.asarray([samples[s][0] for s in range(k)], dtype=np.float32)
            exponents = np.asarray([samples[s][1] for s in range(k)], dtype=np.int32)
            if exponents.any():
                block = np.ldexp(block, -exponents[:, None]).astype(np.float32)
            out[qid] = np.ascontiguousarray(block[:, : self.dim])
        return out

    def _scan(self, filters: _Filter) -> tuple[np.ndarray, np.ndarray]:
        """Every stored question that passes the filters -> ids (n,), codes (n, K, D): the exact fallback."""
        self.counters.add(scans=1)
        rows = list(self._iterate(filters.expr or "", ["pk", "question_id", "code", "exponent"]))
        codes = self._assemble(rows)
        ids = np.asarray(sorted(codes), dtype=np.int64)
        if filters.mask is not None:
            ids = ids[np.isin(ids, filters.mask)]
        stacked = np.stack([codes[int(i)] for i in ids.tolist()]) if len(ids) else np.empty((0, self.samples_per_item, self.dim), np.float32)
        return ids, stacked

    # ---------------------------------------------------------------------------------- search

    def search(
        self, queries, *, threshold: float, min_pairs: int = 1, limit: int = 10, allowed=None, expr: str | None = None
    ) -> list[list[Match]]:
        """queries (nq, Kq, D) -> one ordered list of matches per query, equal to the reference.

        threshold may be math.inf (every question qualifies: the `limit` nearest by closest pair).
        allowed: None, or ids (m,): the rule over only those of them that are stored. expr: an
        optional Milvus boolean expression over the stored fields (e.g. `meta["tenant"] == "acme"`),
        evaluated by Milvus, ANDed with `allowed`."""
        codes = _as_codes("queries", queries, self.dim, None)
        threshold = _as_threshold(threshold)
        min_pairs = _non_negative_int("min_pairs", min_pairs)
        limit = _non_negative_int("limit", limit)
        nq, kq = codes.shape[:2]
        self.counters.add(searches=nq)
        rule = Rule(self.metric, threshold, min_pairs, limit)
        if nq == 0:
            return []
        if limit == 0 or min_pairs > kq * self.samples_per_item:
            return [[] for _ in range(nq)]
        with self._pinned():
            return self._search(codes, rule, _Filter.build(allowed, expr, self.expr_max_ids))

    def _search(self, codes: np.ndarray, rule: Rule, filters: _Filter) -> list[list[Match]]:
        nq = len(codes)
        threshold = rule.threshold
        if filters.empty:
            return [[] for _ in range(nq)]
        if filters.ids is not None and len(filters.ids) <= self.subset_max_questions:
            self.counters.add(subset_reads=1)
            return self._evaluate_all(codes, rule, *self._subset(filters))
        if self.metric == "cosine" and not rule.everything_qualifies and threshold >= 1.0 - 4 * self._gamma - 1e-6:
            # Zero vectors sit at cosine distance exactly 1 from everything, and engines disagree
            # about them (NaN, 0); a threshold this wide accepts half the sphere anyway: scan.
            return self._evaluate_all(codes, rule, *self._scan(filters))
        if rule.everything_qualifies:
            return [self._ranking(codes[i], rule, filters) for i in range(nq)]
        return self._threshold_search(codes, rule, filters)

    def _subset(self, filters: _Filter) -> tuple[np.ndarray, np.ndarray]:
        found = self._fetch(filters.ids, filters.user_expr)
        ids = np.asarray(sorted(found), dtype=np.int64)
        stacked = np.stack([found[int(i)] for i in ids.tolist()]) if len(ids) else np.empty((0, self.samples_per_item, self.dim), np.float32)
        return ids, stacked

    def _evaluate_all(self, codes: np.ndarray, rule: Rule, ids: np.ndarray, stored: np.ndarray) -> list[list[Match]]:
        return [
            brute_force_search(
                q, ids, stored, threshold=rule.threshold, min_pairs=rule.min_pairs, limit=rule.limit, metric=self.metric
            )
            for q in codes
        ]

    def _evaluate(self, query: np.ndarray, found: dict[int, np.ndarray], qids, rule: Rule) -> list[Match]:
        rows = [q for q in qids if q in found]
        if not rows:
            return []
        stored = np.stack([found[q] for q in rows])
        distances = pair_distances(query, stored, self.metric).reshape(len(rows), -1)
        within = (distances <= rule.threshold).sum(axis=1)
        closest = distances.min(axis=1)
        keep = np.flatnonzero(within >= rule.min_pairs)
        return [Match(int(rows[i]), float(closest[i]), int(within[i])) for i in keep]

    # ---- the threshold rule: range searches, complete per vector, then exact evaluation

    def _norms(self, vectors: np.ndarray) -> np.ndarray:
        return np.linalg.norm(vectors.astype(np.float64), axis=-1)

    def _radius(self, norms: np.ndarray, threshold: float) -> float:
        """The Milvus radius (exclusive bound) that keeps every pair within `threshold`."""
        if self.metric == "l2":
            t = threshold * (1.0 + REFERENCE_MARGIN)
            reach = 2.0 * float(np.max(norms)) + t  # |q| + |s| with |s| <= |q| + t for a stored code in range
            squared = t * t + self._gamma * reach * reach + UNDERFLOW_FLOOR
            return float(np.nextafter(squared * (1.0 + 1e-6), math.inf))
        return 1.0 - threshold - 4.0 * self._gamma - 64 * ENGINE_UNIT_ROUNDOFF - REFERENCE_MARGIN

    def _threshold_search(self, codes: np.ndarray, rule: Rule, filters: _Filter) -> list[list[Match]]:
        nq, kq = codes.shape[:2]
        k = self.samples_per_item
        norms = self._norms(codes)
        # Vectors to search: (query, sample). A zero cosine query sample is at distance 1 > t from all.
        todo = [(i, j) for i in range(nq) for j in range(kq) if not (self.metric == "cosine" and norms[i, j] == 0)]
        if self.metric == "l2":
            todo.sort(key=lambda ij: norms[ij])  # similar radii share a request
        hits: dict[tuple[int, int], np.ndarray] = {}
        for start in range(0, len(todo), self.vectors_per_request):
            group = todo[start : start + self.vectors_per_request]
            radius = self._radius(np.array([norms[ij] for ij in group]), rule.threshold)
            for ij, pks in zip(group, self._complete_range(codes, group, radius, filters), strict=True):
                hits[ij] = pks
        candidates: list[list[int]] = []
        for i in range(nq):
            parts = [hits[(i, j)] for j in range(kq) if (i, j) in hits]
            pks = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            qids, counts = np.unique(np.floor_divide(pks, k), return_counts=True)
            qids = qids[counts >= rule.min_pairs]  # proposed pairs are a superset of the pairs within t
            if filters.mask is not None:
                qids = qids[np.isin(qids, filters.mask)]
            candidates.append(qids.tolist())
        union = sorted({q for qs in candidates for q in qs})
        found = self._fetch(union) if union else {}
        return [order_matches(self._evaluate(codes[i], found, candidates[i], rule), rule.limit) for i in range(nq)]

    def _complete_range(self, codes, group, radius: float, filters: _Filter) -> list[np.ndarray]:
        """Range search for the vectors `group` ((query, sample) pairs): every stored pk within
        `radius` per vector, however many (limit grown to the cap, then id-range splits)."""
        vectors = [codes[i, j] for i, j in group]
        limit = self.first_limit
        results = self._range(vectors, radius, limit, filters.expr)
        out: list[np.ndarray | None] = [None] * len(group)
        pending = []
        for position, pks in enumerate(results):
            if len(pks) < limit:
                out[position] = pks
            else:
                pending.append(position)
        # A full answer may be cut: ask again with a larger limit, one vector at a time from here.
        for position in pending:
            self.counters.add(truncated=1)
            out[position] = self._range_all(vectors[position], radius, filters.expr, limit, results[position])
        return out  # type: ignore[return-value]

    def _range_all(self, vector, radius: float, expr: str | None, previous_limit: int, pks: np.ndarray) -> np.ndarray:
        limit = previous_limit
        while limit < self.topk_cap:
            limit = min(limit * 8, self.topk_cap)
            pks = self._range([vector], radius, limit, expr)[0]
            if len(pks) < limit:
                return pks
            self.counters.add(truncated=1)
        # At the cap: page by question-id ranges, split at the median id of the hits.
        parts = []
        stack = [(INT64_MIN, INT64_MAX, pks)]
        requests = 0
        while stack:
            lo, hi, full = stack.pop()
            ids = np.sort(np.floor_divide(full, self.samples_per_item))
            middle = int(ids[len(ids) // 2])
            halves = [(lo, middle), (middle + 1, hi)] if middle < hi else [(lo, middle - 1), (middle, hi)]
            for a, b in halves:
                if a > b:
                    continue
                bounds = f"question_id >= {a} and question_id <= {b}"
                sub = self._range([vector], radius, self.topk_cap, f"({expr}) and ({bounds})" if expr else bounds)[0]
                requests += 1
                if len(sub) < self.topk_cap:
                    parts.append(sub)
                else:
                    stack.append((a, b, sub))
        self.counters.add(split_requests=requests)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _range(self, vectors, radius: float, limit: int, expr: str | None) -> list[np.ndarray]:
        self.counters.add(engine_searches=1)
        params = {"metric_type": self._metric_type, "params": {"radius": radius}}
        result = self._client.search(
            self._target, data=self._engine_queries(vectors), limit=limit,
            filter=expr or "", search_params=params, output_fields=[], anns_field="code",
        )
        return [np.fromiter((hit["pk"] for hit in hits), dtype=np.int64) for hits in result]

    def _topk(self, vectors, limit: int, expr: str | None) -> list[tuple[np.ndarray, np.ndarray]]:
        self.counters.add(engine_searches=1)
        result = self._client.search(
            self._target, data=self._engine_queries(vectors), limit=limit,
            filter=expr or "", search_params={"metric_type": self._metric_type}, output_fields=[], anns_field="code",
        )
        return [
            (
                np.fromiter((hit["pk"] for hit in hits), dtype=np.int64),
                np.fromiter((hit["distance"] for hit in hits), dtype=np.float64),
            )
            for hits in result
        ]

    # ---- ranking (every question qualifies): growing top-k until nothing unseen can rank in

    def _unseen_beyond(self, engine_last: float, norm: float, bound: float) -> bool:
        """Whether every stored code the engine ranked at or after `engine_last` (its k-th answer) is
        at exact distance > `bound` from a query sample of norm `norm`."""
        if math.isinf(bound):
            return False
        b = bound * (1.0 + REFERENCE_MARGIN) + REFERENCE_MARGIN
        if self.metric == "l2":
            reach = 2.0 * norm + b
            return engine_last > b * b + self._gamma * reach * reach + UNDERFLOW_FLOOR
        # COSINE answers similarities (larger is nearer): exact distance >= 1 - similarity - error.
        return 1.0 - engine_last - 4.0 * self._gamma - 64 * ENGINE_UNIT_ROUNDOFF > b

    def _ranking(self, query: np.ndarray, rule: Rule, filters: _Filter) -> list[Match]:
        k = self.samples_per_item
        norms = self._norms(query)
        samples = [j for j in range(len(query)) if not (self.metric == "cosine" and norms[j] == 0)]
        zero_sample = len(samples) < len(query)  # at exactly distance 1 from every stored code
        limit = min(max(self._rank_first, rule.limit * k), self.topk_cap)
        state: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # sample -> pks, engine distances, limit asked
        found: dict[int, np.ndarray] = {}
        todo = samples
        while True:
            if todo:
                for j, (pks, distances) in zip(todo, self._topk([query[j] for j in todo], limit, filters.expr), strict=True):
                    state[j] = (pks, distances, limit)
            qids = {int(q) for pks, _, _ in state.values() for q in np.floor_divide(pks, k).tolist()}
            if filters.mask is not None:
                qids = {q for q in qids if q in filters.keep}
            missing = sorted(qids - found.keys())
            if missing:
                found.update(self._fetch(missing))
            best = order_matches(self._evaluate(query, found, sorted(qids), rule), rule.limit)
            if any(len(pks) < asked for pks, _, asked in state.values()):
                return best  # one sample's answer holds every stored row: every question was evaluated
            bound = best[-1].distance if len(best) >= rule.limit else math.inf
            if zero_sample and not bound < 1.0:
                # A zero query sample is at distance exactly 1 from every code: ties at 1 need everything.
                return self._evaluate_all(query[None], rule, *self._scan(filters))[0]
            todo = [
                j for j in samples
                if len(state[j][0]) >= state[j][2] and not self._unseen_beyond(float(state[j][1][-1]), float(norms[j]), bound)
            ]
            if not todo:
                return best
            if limit >= self.topk_cap:
                self.counters.add(truncated=len(todo))
                return self._evaluate_all(query[None], rule, *self._scan(filters))[0]
            self.counters.add(truncated=len(todo))
            limit = min(limit * 8, self.topk_cap)


def _is_lite(client) -> bool:
    try:
        return str(client.get_server_version()).startswith("milvus_lite")
    except Exception:
        return False


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _in_expr(ids) -> str:
    return "question_id in [" + ",".join(str(int(i)) for i in ids) + "]"


@dataclass
class _Filter:
    """How `allowed` and `expr` reach Milvus: ids (the allowed stored-or-not ids, sorted unique),
    expr (what Milvus evaluates), mask (ids to keep client-side when the set is too large for an
    expression)."""

    ids: np.ndarray | None
    user_expr: str | None
    expr: str | None
    mask: np.ndarray | None
    keep: frozenset = frozenset()
    empty: bool = False

    @classmethod
    def build(cls, allowed, expr: str | None, expr_max_ids: int) -> _Filter:
        if expr is not None and (not isinstance(expr, str) or not expr.strip()):
            raise ValueError("expr must be a non-empty Milvus boolean expression or None")
        if allowed is None:
            return cls(None, expr, expr, None)
        ids = np.unique(_as_ids("allowed", allowed))
        if not len(ids):
            return cls(ids, expr, expr, None, empty=True)
        if len(ids) <= expr_max_ids:
            allowed_expr = _in_expr(ids)
            return cls(ids, expr, f"({allowed_expr}) and ({expr})" if expr else allowed_expr, None)
        return cls(ids, expr, expr, ids, frozenset(ids.tolist()))
