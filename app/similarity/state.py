"""The search state (encoder, index, catalog) and how one is made from the database: loaded from a
saved index and caught up, or built from every question.

A `SearchState` is what a search reads. Its encoder never changes; its index and catalog change,
but only through the change applier (applier.py), the one writer: the index publishes immutable
snapshots (a search works on one whole snapshot), and the catalog (id -> text, external id, answer,
metadata; catalog.py) always holds every id the index holds (entries are added before the index
has them and removed after it dropped them), so every id a search finds has its summary.

`StateBuilder` makes states that are not live yet: at start-up and for a reindex, which builds a
whole new state while the live one keeps serving.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.admin.repository import ServiceStateRepository
from app.core.config import Settings
from app.core.db import Database
from app.model.encoder import QuestionEncoder
from app.questions import repository
from app.search import IndexFileError, SimilarityIndex
from app.similarity.catalog import Catalog, CatalogEntry

logger = logging.getLogger(__name__)

Progress = Callable[[float], None]


@dataclass(frozen=True, eq=False)
class SearchState:
    encoder: QuestionEncoder
    index: SimilarityIndex
    catalog: Catalog = field(repr=False)
    generation: int = 0  # the active-model generation this state serves (see ServiceStateRepository)

    @property
    def revision(self) -> int:
        """Last database change applied (0 for an index that never recorded one)."""
        return self.index.revision or 0


def encoder_device(setting: str) -> str:
    """QSIM_DEVICE for the encoder: auto is the GPU when torch sees one."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class IndexBackendUnavailable(RuntimeError):
    """QSIM_INDEX_BACKEND names a backend that cannot serve: Milvus unreachable, or its client missing."""


class StateBuilder:
    """Makes search states from the database; never touches the live one. Owns where indexes are
    kept: FAISS indexes are saved in one directory per model under QSIM_INDEX_DIR; Milvus indexes are
    collections behind one alias per database (the collection the alias names is the live one)."""

    def __init__(self, database: Database, settings: Settings, service_state: ServiceStateRepository):
        self.db = database
        self.settings = settings
        self.service_state = service_state
        self._milvus = None

    @property
    def backend(self) -> str:
        return self.settings.index_backend

    def load_encoder(self, model_dir: Path) -> QuestionEncoder:
        return QuestionEncoder.load(model_dir, device=encoder_device(self.settings.device))

    def index_path(self, model_id: str) -> Path:
        """Where the FAISS index of this database under this model is saved: one directory per model,
        so workers still serving the previous model never save over the new model's index."""
        return Path(self.settings.index_dir) / self.service_state.database_id() / model_id

    # ------------------------------------------------------------------ Milvus

    @property
    def milvus_alias(self) -> str:
        return f"qsim_{self.service_state.database_id()}"

    def milvus_client(self):
        """One Milvus client per process, connected at first use; IndexBackendUnavailable naming the
        URI when Milvus does not answer."""
        if self._milvus is None:
            from app.search.milvus import connect  # imports pymilvus only to connect

            if not self._milvus_installed():
                raise IndexBackendUnavailable(
                    "QSIM_INDEX_BACKEND=milvus needs pymilvus and milvus-lite: pip install 'qsim[milvus]'"
                )
            token = self.settings.milvus_token.get_secret_value() if self.settings.milvus_token else None
            if str(self.settings.milvus_uri).endswith(".db"):
                Path(self.settings.milvus_uri).parent.mkdir(parents=True, exist_ok=True)
            try:
                client = connect(self.settings.milvus_uri, token, timeout=self.settings.milvus_timeout_seconds)
                client.list_collections()
            except Exception as error:
                raise IndexBackendUnavailable(
                    f"QSIM_INDEX_BACKEND=milvus: Milvus at {self.settings.milvus_uri} does not answer: {error}"
                ) from None
            self._milvus = client
        return self._milvus

    def backend_errors(self) -> tuple[type[BaseException], ...]:
        """What the backend raises when it does not answer (searches then get 503, not 500)."""
        if self.backend != "milvus" or not self._milvus_installed():
            return ()  # without pymilvus the start stops at check_backend, saying so
        from pymilvus.exceptions import MilvusException

        return (MilvusException,)

    @staticmethod
    def _milvus_installed() -> bool:
        return importlib.util.find_spec("pymilvus") is not None

    def check_backend(self) -> None:
        """At start-up: the configured backend can serve (a clear error now, never a silent fallback)."""
        if self.backend == "milvus":
            self.milvus_client()

    def close(self) -> None:
        if self._milvus is not None:
            self._milvus.close()
            self._milvus = None

    # ------------------------------------------------------------------ indexes

    @property
    def _index_options(self) -> dict:
        """Tuning of the approximate kinds; not stored in the saved index, so passed at load too."""
        return {
            "nlist": self.settings.index_nlist,
            "nprobe": self.settings.index_nprobe,
            "hnsw_m": self.settings.index_hnsw_m,
            "ef_search": self.settings.index_ef_search,
        }

    def new_index(self, encoder: QuestionEncoder):
        """An empty index for `encoder`: in memory (FAISS), or a new Milvus collection (the alias
        points at it only if there was none: `publish` switches it)."""
        if self.backend == "milvus":
            from app.search.milvus import create_for_alias

            return create_for_alias(
                None, self.milvus_alias, encoder.latent_dim, encoder.samples_per_question, encoder.metric,
                encoder.model_id, client=self.milvus_client(),
            )
        return SimilarityIndex(
            dim=encoder.latent_dim,
            samples_per_item=encoder.samples_per_question,
            metric=encoder.metric,
            kind=self.settings.index_kind,
            device=self.settings.device,
            model_id=encoder.model_id,
            **self._index_options,
        )

    def _open_saved(self, encoder: QuestionEncoder):
        if self.backend == "milvus":
            from app.search.milvus import MilvusIndex

            client = self.milvus_client()
            if not MilvusIndex.exists(None, self.milvus_alias, client=client):
                return None
            return MilvusIndex.load(
                None, self.milvus_alias, expected_model_id=encoder.model_id, expected_dim=encoder.latent_dim,
                expected_samples=encoder.samples_per_question, expected_metric=encoder.metric,
                resolve_alias=True, client=client,
            )
        path = self.index_path(encoder.model_id)
        if not SimilarityIndex.exists(path):
            return None
        return SimilarityIndex.load(
            path,
            expected_model_id=encoder.model_id,
            expected_dim=encoder.latent_dim,
            expected_samples=encoder.samples_per_question,
            expected_metric=encoder.metric,
            expected_kind=self.settings.index_kind,
            device=self.settings.device,
            **self._index_options,
        )

    def load_saved(self, encoder: QuestionEncoder, generation: int = 0) -> SearchState | None:
        """The saved index for `encoder` (FAISS: its directory; Milvus: the collection the alias
        names) with a fresh catalog, or None when there is none usable (the caller builds one). It
        may lag the database: the applier catches it up. The catalog is read after the index, so it
        holds every question of the index that still exists (the applier replays later deletions).
        Read in a second thread meanwhile, it saved nothing: the index load's many short GIL-free
        steps queued behind the catalog's Python work (100k questions: 1.4-1.7 s -> 2.5-3.0 s)."""
        try:
            index = self._open_saved(encoder)
        except IndexFileError as error:
            logger.warning("not using the saved index: %s; rebuilding from the database", error)
            return None
        if index is None:
            return None
        with self.db.reading() as session:
            latest = repository.last_change(session)
        if (index.revision or 0) > latest:
            logger.warning(
                "saved index is at change %d but the database only has %d (restored from a backup?); rebuilding",
                index.revision, latest,
            )
            return None
        return SearchState(encoder, index, self.load_catalog(), generation)

    def save(self, state: SearchState) -> str:
        """Makes `state`'s index durable (FAISS: a snapshot in its directory; Milvus: a flush)."""
        if self.backend == "milvus":
            return state.index.save()
        path = self.index_path(state.encoder.model_id)
        state.index.save(path)
        return str(path)

    def publish(self, state: SearchState) -> str | None:
        """Milvus: points the alias at `state`'s collection (replicas opening the index from now on get
        it); returns the collection it named before, for the caller to drop once nobody reads it."""
        if self.backend != "milvus":
            return None
        from app.search.milvus import switch_alias

        previous = switch_alias(self.milvus_client(), self.milvus_alias, state.index.name)
        return previous if previous != state.index.name else None

    def drop_collection(self, name: str) -> None:
        self.milvus_client().drop_collection(name)

    def load_catalog(self) -> Catalog:
        catalog = Catalog()
        with self.db.reading() as session:
            for batch in repository.iter_summaries(session):
                catalog.update((row[0], CatalogEntry(*row[1:])) for row in batch)
        return catalog

    def build(self, encoder: QuestionEncoder, generation: int = 0, progress: Progress | None = None) -> SearchState:
        """A new state holding every question of the database, encoded by `encoder`, at the revision
        read before the first page; changes made during the build are replayed by the applier."""
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
        index.compact()
        return SearchState(encoder, index, catalog, generation)
