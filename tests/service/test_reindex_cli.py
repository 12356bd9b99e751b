"""`qsim reindex`: rebuild the saved index offline; the next start uses it as it is."""

from __future__ import annotations

import pytest

from app.cli import main
from app.core.config import get_settings
from app.core.db import open_database
from app.questions.importer import import_questions
from app.questions.repository import NewQuestion
from app.search import SimilarityIndex
from app.similarity.state import StateBuilder
from tests.service_fixtures import start_client


@pytest.fixture
def env(monkeypatch, settings):
    for name, value in {
        "QSIM_DATABASE_URL": settings.database_url,
        "QSIM_MODEL_DIR": str(settings.model_dir),
        "QSIM_INDEX_DIR": str(settings.index_dir),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_reindex_writes_an_index_the_service_then_loads_without_rebuilding(env, capsys, monkeypatch, tiny_encoder):
    database = open_database(env.database_url)
    import_questions(database, [NewQuestion(f"offline question {i} about my card") for i in range(40)])
    database.dispose()

    assert main(["reindex"]) == 0
    assert "indexed 40 questions" in capsys.readouterr().out
    saved = next(p for p in env.index_dir.glob("*/*") if SimilarityIndex.exists(p))
    index = SimilarityIndex.load(saved, expected_model_id=tiny_encoder.model_id)
    assert len(index) == 40 and index.revision == 40

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the index written by qsim reindex should have been loaded")

    monkeypatch.setattr(StateBuilder, "build", no_rebuild)
    client = start_client(env)
    try:
        found = client.post("/questions/similar", json={"question": "offline question 7 about my card", "threshold": 1e-9})
        assert len(found.json()["results"]) == 1
    finally:
        client.__exit__(None, None, None)
