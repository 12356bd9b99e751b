"""A search that meets a change half-applied (the catalog and the index are updated one after the
other) still answers with as many results as its limit allows, none of them deleted."""

import numpy as np
import pytest

from app.search import SimilarityIndex
from app.similarity import search_service
from app.similarity.catalog import Catalog, CatalogEntry
from app.similarity.search_service import SearchQuery, search
from app.similarity.state import SearchState


@pytest.fixture
def state(tiny_encoder, tiny_corpus_rows) -> SearchState:
    texts = [row["text"] for row in tiny_corpus_rows[:40]]
    codes = tiny_encoder.sample(texts)
    index = SimilarityIndex(codes.shape[2], codes.shape[1], tiny_encoder.metric, model_id=tiny_encoder.model_id,
                            device="cpu")
    ids = list(range(1, len(texts) + 1))
    index.add(ids, codes, revision=1)
    catalog = Catalog((i, CatalogEntry(text, None, None, {"tenant": "a"})) for i, text in zip(ids, texts, strict=True))
    return SearchState(tiny_encoder, index, catalog)


def ranked_ids(state: SearchState, text: str, limit: int, **query) -> list[int]:
    return [hit.id for hit in search(state, [SearchQuery(text, limit=limit, threshold=1e6, min_pairs=1, **query)], 0.0)[0].hits]


def deleting_during_the_search(state: SearchState, monkeypatch, victims: list[int]) -> None:
    """The applier's delete landing between the index search and the catalog read: the index the
    search read still had the victims; the catalog no longer has them."""
    real = state.index.search
    calls = []

    def search_then_delete(*args, **kwargs):
        found = real(*args, **kwargs)
        if not calls:
            state.index.apply(remove_ids=np.asarray(victims), revision=2)
            for victim in victims:
                state.catalog.pop(victim)
        calls.append(kwargs.get("limit"))
        return found

    monkeypatch.setattr(state.index, "search", search_then_delete)


def test_a_search_that_lost_matches_to_a_delete_still_fills_its_limit(state, monkeypatch):
    query = state.catalog.get(1).text
    before = ranked_ids(state, query, 5)
    victims = before[1:3]
    deleting_during_the_search(state, monkeypatch, victims)
    answered = ranked_ids(state, query, 5)
    monkeypatch.undo()
    assert answered == ranked_ids(state, query, 5)  # the brute-force order after the delete
    assert len(answered) == 5 and not set(victims) & set(answered)


def test_a_filtered_search_that_lost_matches_to_a_metadata_change_still_fills_its_limit(state, monkeypatch):
    query = state.catalog.get(1).text
    before = ranked_ids(state, query, 4, filter=SearchQuery.where({"tenant": "a"}))
    moved = before[1]
    real = state.index.search

    def search_then_move(*args, **kwargs):
        found = real(*args, **kwargs)
        entry = state.catalog.get(moved)
        state.catalog.update([(moved, CatalogEntry(entry.text, None, None, {"tenant": "b"}))])
        return found

    monkeypatch.setattr(state.index, "search", search_then_move)
    answered = ranked_ids(state, query, 4, filter=SearchQuery.where({"tenant": "a"}))
    monkeypatch.undo()
    assert len(answered) == 4 and moved not in answered
    assert answered == ranked_ids(state, query, 4, filter=SearchQuery.where({"tenant": "a"}))


def test_the_refill_gives_up_after_a_few_tries(state, monkeypatch):
    """A catalog that keeps losing questions (a bulk delete in progress) does not hold a search forever."""
    query = state.catalog.get(1).text
    real = state.index.search
    tries = []

    def search_and_lose_the_nearest(*args, **kwargs):
        found = real(*args, **kwargs)
        tries.append(1)
        for match in [m for m in found[0] if state.catalog.get(m.id) is not None][:2]:
            state.catalog.pop(match.id)
        return found

    monkeypatch.setattr(state.index, "search", search_and_lose_the_nearest)
    answered = ranked_ids(state, query, 3)
    assert len(tries) == 1 + search_service.REFILL_ATTEMPTS
    assert 0 < len(answered) < 3 and all(state.catalog.get(i) is not None for i in answered)
