"""The service on the Milvus backend (QSIM_INDEX_BACKEND=milvus, embedded milvus-lite): the
service tests that matter for where the codes live, run again on it. Each imported test below runs
here with this module's `settings`, so the same assertions hold on both backends: answers equal to
the brute-force reference, writes searchable when their call returns, reindex while searching (a
new collection behind the alias), restart and reconcile. kill -9 during writes on Milvus is in
tests/reliability/test_crash.py."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from tests.conftest import require_milvus

require_milvus()

from app.core.migrations import upgrade_to_head  # noqa: E402
from app.main import create_app  # noqa: E402
from app.similarity.state import IndexBackendUnavailable  # noqa: E402
from tests.service.test_admin import (  # noqa: E402, F401
    test_reindex_rebuilds_the_same_index,
    test_reindex_with_another_model_switches_the_served_model,
    test_searches_keep_answering_during_a_reindex_and_writes_made_meanwhile_are_in_the_new_index,
)
from tests.service.test_desk_api import test_filters_equal_the_brute_force_rule_over_the_questions_that_pass  # noqa: E402, F401
from tests.service.test_lifecycle import (  # noqa: E402, F401
    first_run,
    test_changes_made_while_the_service_was_down_are_applied_at_start,
    test_drift_the_change_log_does_not_show_is_reconciled,
    test_graceful_shutdown_saves_and_a_restart_reuses_the_index,
)
from tests.service.test_questions_api import (  # noqa: E402, F401
    test_a_stored_question_is_searchable_as_soon_as_the_call_returns,
    test_changing_the_text_re_encodes_it_and_other_fields_keep_the_codes,
    test_deleted_question_is_gone_from_storage_and_search,
)
from tests.service.test_similar_api import (  # noqa: E402, F401
    test_a_stored_question_finds_itself_at_distance_zero,
    test_batch_answers_each_question_as_the_single_route_does,
    test_encode_returns_exactly_the_codes_the_index_holds,
    test_results_are_the_brute_force_rule_over_the_stored_codes,
)
from tests.service_fixtures import make_settings  # noqa: E402


def milvus_settings(database_url, model_dir, tmp_path, **overrides):
    return make_settings(
        database_url, model_dir, tmp_path, index_backend="milvus",
        milvus_uri=str(tmp_path / "index" / "milvus.db"), **overrides,
    )


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite only: where the codes live does not depend on the database (the PostgreSQL variants
    of these tests run on the FAISS backend), and CI time is better spent elsewhere."""
    url = f"sqlite:///{tmp_path / 'qsim.db'}"
    upgrade_to_head(url)
    return url


@pytest.fixture
def settings(database_url, tiny_model_dir, tmp_path):
    return milvus_settings(database_url, tiny_model_dir, tmp_path)


def test_readiness_and_metrics_name_the_backend(client, stored):
    ready = client.get("/readyz").json()
    assert (ready["index_backend"], ready["device"], ready["questions"]) == ("milvus", "milvus-lite", len(stored))
    metrics = client.get("/metrics").text
    assert 'qsim_index_backend{backend="milvus"} 1.0' in metrics
    client.post("/questions/similar", json={"question": stored[0]["text"]})
    assert 'qsim_milvus_events{event="searches"}' in client.get("/metrics").text


def test_a_reindex_switches_the_alias_to_a_new_collection_and_drops_the_old(client, stored, admin):
    from tests.service.test_admin import wait_for_job

    runtime = client.app.state.runtime
    milvus, alias = runtime.builder.milvus_client(), runtime.builder.milvus_alias
    before = milvus.describe_alias(alias)["collection_name"]
    job = wait_for_job(client, admin, client.post("/admin/reindex", headers=admin).json()["job_id"])
    assert job["status"] == "succeeded"
    after = milvus.describe_alias(alias)["collection_name"]
    assert after != before and after == runtime.applier.state.index.name
    assert before not in milvus.list_collections()
    found = client.post("/questions/similar", json={"question": stored[5]["text"], "threshold": 1e-9}).json()
    assert found["results"][0]["id"] == stored[5]["id"]


def test_an_unreachable_milvus_is_a_clear_start_up_error_not_a_fallback(database_url, tiny_model_dir, tmp_path):
    settings = milvus_settings(database_url, tiny_model_dir, tmp_path).model_copy(
        update={"milvus_uri": "http://127.0.0.1:9", "milvus_timeout_seconds": 2.0}
    )
    with pytest.raises(IndexBackendUnavailable, match=r"Milvus at http://127.0.0.1:9 does not answer"), TestClient(
        create_app(settings)
    ):
        pass


def test_milvus_needs_a_uri_and_an_unknown_backend_is_refused(database_url, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="needs QSIM_MILVUS_URI"):
        make_settings(database_url, tiny_model_dir, tmp_path, index_backend="milvus")
    with pytest.raises(ValueError, match="index_backend"):
        make_settings(database_url, tiny_model_dir, tmp_path, index_backend="elastic")


def test_searches_during_a_milvus_outage_get_503_and_writes_catch_up_after_it(
    database_url, tiny_model_dir, tmp_path, monkeypatch
):
    from pymilvus.exceptions import MilvusException

    from tests.service_fixtures import start_client

    client = start_client(milvus_settings(database_url, tiny_model_dir, tmp_path, write_visibility_timeout_seconds=0.5))
    try:
        milvus = client.app.state.runtime.builder.milvus_client()

        def unavailable(*args, **kwargs):
            raise MilvusException(code=2, message="Milvus is down (injected)")

        for method in ("search", "upsert", "query", "get", "delete"):
            monkeypatch.setattr(milvus, method, unavailable)
        down = client.post("/questions/similar", json={"question": "is my card frozen"})
        assert down.status_code == 503 and down.headers["retry-after"] and "index backend did not answer" in down.json()["detail"]
        stored = client.post("/questions", json={"text": "a question stored while Milvus was down"})
        assert stored.status_code == 201  # in the database, the source of truth; applied once Milvus answers
        monkeypatch.undo()
        deadline = time.monotonic() + 30
        while True:
            found = client.post("/questions/similar", json={"question": "a question stored while Milvus was down",
                                                            "threshold": 1e-9}).json()
            if [r["id"] for r in found["results"]] == [stored.json()["id"]]:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        assert "qsim_lagging_writes_total 1.0" in client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)


def test_a_refused_stale_rebuild_leaves_no_collection_behind(client, stored, other_tiny_model_dir):
    from app.similarity.applier import ModelChangedDuringRebuild

    runtime = client.app.state.runtime
    live = runtime.applier.state
    stale = runtime.builder.build(live.encoder, live.generation)  # a new collection, with the old model
    runtime.reindex(model_dir=other_tiny_model_dir)
    with pytest.raises(ModelChangedDuringRebuild):
        runtime.applier.switch(stale)
    assert runtime.builder.milvus_client().list_collections() == [runtime.applier.state.index.name]
