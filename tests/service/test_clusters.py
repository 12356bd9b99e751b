"""Duplicate clusters over HTTP (POST /admin/clusters, the job, GET /admin/clusters/{job_id}) and
offline (`qsim cluster`), on both databases."""

from __future__ import annotations

import csv
import time
import uuid

import numpy as np
from sklearn.metrics import adjusted_rand_score

from app.cli import main
from app.clusters.clustering import labels_of, purity
from app.core.config import get_settings
from app.search.reference import pair_distances

GROUPS = {
    "card": ["Where is my card?", "where is my card?", "  WHERE is my   card? "],
    "refund": ["How do I get a refund?", "how do i get a refund?"],
    "pin": ["I forgot my PIN", "i forgot my pin", "I FORGOT MY PIN", "i  forgot  my  pin"],
}
LONERS = ["What is the exchange rate for euros?", "Can I top up by bank transfer?"]


def run_clusters(client, admin, body=None) -> dict:
    started = client.post("/admin/clusters", json=body, headers=admin) if body is not None else client.post(
        "/admin/clusters", headers=admin
    )
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/admin/jobs/{job_id}", headers=admin).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "succeeded" and job["kind"] == "clusters", job
    result = client.get(f"/admin/clusters/{job_id}", headers=admin)
    assert result.status_code == 200, result.text
    return result.json()


def store_groups(client, tenant_of=lambda label: "acme"):
    items = []
    for label, texts in GROUPS.items():
        for text in texts:
            items.append((label, client.post("/questions", json={"text": text, "metadata": {"tenant": tenant_of(label)}}).json()))
    for i, text in enumerate(LONERS):
        items.append((f"loner{i}", client.post("/questions", json={"text": text, "metadata": {"tenant": "acme"}}).json()))
    return items


def test_duplicates_cluster_exactly_into_their_groups(client, admin):
    items = store_groups(client)
    # Identical normalised texts have identical codes: distance 0 on their K diagonal pairs.
    result = run_clusters(client, admin, {"threshold": 1e-9, "min_pairs": 5})
    assert [c["size"] for c in result["clusters"]] == [4, 3, 2]  # largest first
    assert result["singletons"] == len(LONERS) and result["questions"] == len(items)
    texts = {q["id"]: q["text"] for _, q in items}
    for cluster in result["clusters"]:
        assert cluster["members"][0] == cluster["representative"]
        assert all(m["text"] == texts[m["id"]] for m in cluster["members"])
    clustered = [[m["id"] for m in c["members"]] for c in result["clusters"]]
    grouped = {m for c in clustered for m in c}
    clustered += [[q["id"]] for _, q in items if q["id"] not in grouped]
    ids = np.array([q["id"] for _, q in items])
    truth = np.array([label for label, _ in items])
    predicted = labels_of(clustered, ids)
    assert purity(predicted, truth) == 1.0 and adjusted_rand_score(truth, predicted) == 1.0


def test_clusters_follow_the_rule_and_partition_the_questions(client, admin, stored, tiny_encoder):
    result = run_clusters(client, admin)  # the model's calibrated rule
    threshold, min_pairs = result["threshold"], result["min_pairs"]
    assert (threshold, min_pairs) == (tiny_encoder.default_threshold, tiny_encoder.default_min_pairs)
    members = [m["id"] for c in result["clusters"] for m in c["members"]]
    assert len(members) == len(set(members))
    assert len(members) + result["singletons"] == result["questions"] == len(stored)
    sizes = [c["size"] for c in result["clusters"]]
    assert sizes == sorted(sizes, reverse=True) and all(s >= 2 for s in sizes)
    text_of = {q["id"]: q["text"] for q in stored}
    for cluster in result["clusters"]:
        codes = tiny_encoder.sample([text_of[m["id"]] for m in cluster["members"]])
        within = (pair_distances(codes[0], codes[1:], tiny_encoder.metric) <= threshold).reshape(len(codes) - 1, -1).sum(1)
        assert (within >= min_pairs).all()  # every member matches its representative


def test_a_filter_clusters_only_the_questions_that_pass(client, admin):
    items = store_groups(client, tenant_of=lambda label: "beta" if label == "pin" else "acme")
    result = run_clusters(client, admin, {"threshold": 1e-9, "min_pairs": 5, "filter": {"tenant": "beta"}})
    assert result["questions"] == len(GROUPS["pin"]) and [c["size"] for c in result["clusters"]] == [4]
    assert result["singletons"] == 0 and len(items) > 4


def test_bad_cluster_requests(client, admin):
    assert client.post("/admin/clusters", json={}).status_code == 401
    assert client.post("/admin/clusters", json={"min_pairs": 26}, headers=admin).status_code == 422
    bad_filter = client.post("/admin/clusters", json={"filter": {"tenant": [1]}}, headers=admin)
    assert bad_filter.status_code == 422 and "'tenant'" in bad_filter.json()["detail"]
    assert client.get(f"/admin/clusters/{uuid.uuid4()}", headers=admin).status_code == 404
    assert client.get("/admin/clusters/not-a-uuid", headers=admin).status_code == 422


def test_a_reindex_jobs_id_asked_for_clusters_is_a_404_that_says_what_it_is(client, admin):
    job_id = client.post("/admin/reindex", headers=admin).json()["job_id"]
    response = client.get(f"/admin/clusters/{job_id}", headers=admin)
    assert response.status_code == 404
    assert response.json()["detail"] == (
        f"job {job_id} is a reindex job, not a cluster job: its status is at GET /admin/jobs/{job_id}"
    )
    deadline = time.monotonic() + 60
    while client.get(f"/admin/jobs/{job_id}", headers=admin).json()["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_qsim_cluster_writes_the_same_clusters_offline(client, admin, settings, monkeypatch, tmp_path, capsys):
    store_groups(client)
    online = run_clusters(client, admin, {"threshold": 1e-9, "min_pairs": 5})
    monkeypatch.setenv("QSIM_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("QSIM_MODEL_DIR", str(settings.model_dir))
    monkeypatch.setenv("QSIM_INDEX_DIR", str(tmp_path / "offline-index"))
    get_settings.cache_clear()
    try:
        out = tmp_path / "clusters.csv"
        assert main(["cluster", "--out", str(out), "--threshold", "1e-9", "--min-pairs", "5"]) == 0
    finally:
        get_settings.cache_clear()
    assert "3 clusters of 2 or more, 2 singletons" in capsys.readouterr().out
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    offline = {}
    for row in rows:
        offline.setdefault(int(row["cluster"]), []).append(int(row["id"]))
    assert list(offline.values()) == [[m["id"] for m in c["members"]] for c in online["clusters"]]


def test_qsim_cluster_refuses_a_negative_threshold_or_min_pairs_at_once(tmp_path, capsys):
    import pytest

    for flag, value in (("--threshold", "-1"), ("--threshold", "nan"), ("--min-pairs", "0")):
        with pytest.raises(SystemExit) as exit_info:
            main(["cluster", "--out", str(tmp_path / "c.csv"), flag, value])
        assert exit_info.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()
