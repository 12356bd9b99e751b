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


class StateBuilder:
    """Makes search states from the database; never touches the live one."""

    def __init__(self, database: Database, settings: Settings, service_state: ServiceStateRepository):
        self.db = database
        self.settings = settings
        self.service_state = service_state

    def load_encoder(self, model_dir: Path) -> QuestionEncoder:
        return QuestionEncoder.load(model_dir, device=encoder_device(self.settings.device))

    def index_path(self, model_id: str) -> Path:
        """Where the index of this database under this model is saved: one directory per model, so
        workers still serving the previous model never save over the new model's index."""
        return Path(self.settings.index_dir) / self.service_state.database_id() / model_id

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

    def load_saved(self, encoder: QuestionEncoder, generation: int = 0) -> SearchState | None:
        """The saved index for `encoder` with a fresh catalog, or None when there is none usable (the
        caller builds one). It may lag the database: the applier catches it up."""
        path = self.index_path(encoder.model_id)
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
        return SearchState(encoder, index, self.load_catalog(), generation)

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
        return SearchState(encoder, index, catalog, generation)
