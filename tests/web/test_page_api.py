"""The desk page's endpoints over HTTP, on the real app (SQLite, and PostgreSQL when it answers):
the page itself and its assets, the pair distances (POST /questions/explain) and the map
(GET /questions/map)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from app.search.reference import brute_force_search, pair_distances
from app.web.service import pca_2d, sample_ids
from tests.service_fixtures import make_settings, start_client

QUERY = "my card still has not arrived, what should I do"


# ----------------------------------------------------------------------------- the page


def test_page_and_assets_are_served_by_the_service(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    # Nothing the page loads names another host, and every asset it names is served.
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references and all(ref.startswith("/") or ref.startswith("#") for ref in references), references
    for ref in references:
        if ref.startswith("/"):
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            text = asset.text.replace("http://www.w3.org/2000/svg", "")  # a namespace name, never fetched
            assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text, ref
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    # The element contract for outside checks.
    for needle in ('id="question"', 'id="results"', 'id="threshold" name="threshold" type="range"'):
        assert needle in html


def test_unknown_asset_is_404_not_a_file_read(client):
    for name in ("nope.js", "..%2Fservice.py", "index.html"):
        response = client.get(f"/ui/{name}")
        assert response.status_code == 404, name
        assert "detail" in response.json()


def test_page_routes_leave_the_questions_api_alone(client, stored):
    # /questions/map and /questions/explain are routed before /questions/{id}; ids still work.
    question = stored[0]
    assert client.get(f"/questions/{question['id']}").json()["text"] == question["text"]
    assert client.get("/questions/0").status_code == 422


# ----------------------------------------------------------------------------- explain


def test_explain_gives_the_pair_distances_of_the_index_codes(client, stored):
    response = client.post("/questions/explain", json={"question": QUERY, "limit": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    model = body["model"]
    k = model["samples"]
    assert model["pairs"] == k * k and model["min_pairs"] >= 1 and model["threshold"] >= 0
    samples = np.asarray(body["query"]["samples"])
    encoded = client.post("/questions/encode", json={"question": QUERY}).json()
    np.testing.assert_array_equal(samples, np.asarray(encoded["samples"]))
    assert len(body["results"]) == 10
    by_id = {q["id"]: q for q in stored}
    for result in body["results"]:
        stored_codes = np.asarray(client.post("/questions/encode", json={"question": result["text"]}).json()["samples"])
        expected = pair_distances(samples, stored_codes[None], model["metric"])[0]
        np.testing.assert_allclose(np.asarray(result["distances"]), expected, rtol=0, atol=1e-12)
        assert result["distance"] == pytest.approx(expected.min())
        assert result["metadata"] == by_id[result["id"]]["metadata"]
        assert result["external_id"] == by_id[result["id"]]["external_id"]
        assert len(result["mean"]) == samples.shape[1]
    distances = [r["distance"] for r in body["results"]]
    assert distances == sorted(distances)  # nearest by closest pair first


def test_explain_pool_reproduces_the_service_answer_for_any_rule(client, stored):
    """What the page does with the sliders: apply (t, min_pairs) to the explained pool. It must be
    exactly what /questions/similar answers, as long as the pool holds the answer."""
    pool = client.post("/questions/explain", json={"question": QUERY, "limit": 100}).json()
    assert len(pool["results"]) == len(stored)  # the whole collection: exact for every rule
    ids = np.asarray([r["id"] for r in pool["results"]])
    k = pool["model"]["samples"]
    query = np.asarray(pool["query"]["samples"])
    all_distances = np.asarray([r["distances"] for r in pool["results"]])
    t0, m0 = pool["model"]["threshold"], pool["model"]["min_pairs"]
    for threshold, min_pairs in [(t0, m0), (0.0, 1), (t0 * 0.6, 1), (t0 * 1.5, k), (t0 * 2.5, k * k), (t0, k * k)]:
        answer = client.post(
            "/questions/similar",
            json={"question": QUERY, "limit": 100, "threshold": threshold, "min_pairs": min_pairs},
        ).json()
        within = (all_distances <= threshold).reshape(len(ids), -1).sum(axis=1)
        closest = all_distances.reshape(len(ids), -1).min(axis=1)
        keep = [i for i in range(len(ids)) if within[i] >= min_pairs]
        keep.sort(key=lambda i: (closest[i], -within[i], ids[i]))
        assert [int(ids[i]) for i in keep] == [r["id"] for r in answer["results"]], (threshold, min_pairs)
        assert [int(within[i]) for i in keep] == [r["pairs_within"] for r in answer["results"]]
    # ... and both are the brute-force rule over the codes the index holds.
    codes = np.asarray([client.post("/questions/encode", json={"question": r["text"]}).json()["samples"] for r in pool["results"]])
    reference = brute_force_search(query, ids, codes, threshold=t0, min_pairs=m0, limit=100, metric=pool["model"]["metric"])
    default = client.post("/questions/similar", json={"question": QUERY, "limit": 100}).json()
    assert [m.id for m in reference] == [r["id"] for r in default["results"]]


def test_explain_given_ids_reports_the_ones_it_does_not_hold(client, stored):
    wanted = [stored[3]["id"], 10**9, stored[1]["id"], stored[3]["id"]]
    body = client.post("/questions/explain", json={"question": QUERY, "ids": wanted}).json()
    assert sorted(r["id"] for r in body["results"]) == sorted([stored[3]["id"], stored[1]["id"]])
    assert body["missing"] == [10**9]
    # nearest first, whatever order the ids came in
    every = [q["id"] for q in stored]
    for order in (every, every[::-1]):
        results = client.post("/questions/explain", json={"question": QUERY, "ids": order}).json()["results"]
        assert [(r["distance"], r["id"]) for r in results] == sorted((r["distance"], r["id"]) for r in results)
        assert len(results) == len(every)
    client.delete(f"/questions/{stored[1]['id']}")
    body = client.post("/questions/explain", json={"question": QUERY, "ids": [stored[1]["id"]]}).json()
    assert body["results"] == [] and body["missing"] == [stored[1]["id"]]


def test_explain_carries_answers(client):
    created = client.post("/questions", json={"text": "How do I freeze my card?", "answer": "Settings > Card > Freeze."}).json()
    plain = client.post("/questions", json={"text": "Where do I see my PIN?"}).json()
    body = client.post("/questions/explain", json={"question": "freeze my card", "ids": [created["id"], plain["id"]]}).json()
    answers = {r["id"]: r["answer"] for r in body["results"]}
    assert answers == {created["id"]: "Settings > Card > Freeze.", plain["id"]: None}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"question": "   "}, "question"),
        ({"question": "a", "ids": []}, "ids"),
        ({"question": "a", "ids": [0]}, "ids"),
        ({"question": "a", "ids": ["1"]}, "ids"),
        ({"question": "a", "ids": list(range(1, 200))}, "ids"),
        ({"question": "a", "limit": 0}, "limit"),
        ({"question": "a", "limit": 10_000}, "limit"),
        ({"question": "a", "threshold": 0.3}, "threshold"),
        ({"text": "a"}, "question"),
    ],
)
def test_explain_rejects_bad_input_naming_the_field(client, body, field):
    response = client.post("/questions/explain", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


# ----------------------------------------------------------------------------- the map


def test_map_projects_the_latent_means_and_colours_by_category(client, stored):
    body = client.get("/questions/map").json()
    assert body["method"] == "pca"
    assert body["total"] == body["sampled"] == len(stored) == len(body["points"])
    assert body["color_key"] == "category" and body["color_keys"] == ["category"]
    by_id = {q["id"]: q for q in stored}
    assert {p["id"] for p in body["points"]} == set(by_id)
    for point in body["points"]:
        assert point["label"] == by_id[point["id"]]["metadata"]["category"]
        assert point["text"] == by_id[point["id"]]["text"]
    # The points are the projection of the posterior means on the returned plane.
    center, components = np.asarray(body["center"]), np.asarray(body["components"])
    assert components.shape == (2, len(center))
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-9)
    some = body["points"][:5]
    means = np.asarray([client.post("/questions/encode", json={"question": p["text"]}).json()["mean"] for p in some])
    np.testing.assert_allclose((means - center) @ components.T, [[p["x"], p["y"]] for p in some], atol=1e-5)
    assert 0 < body["explained_variance"][1] <= body["explained_variance"][0] <= 1


def test_map_is_cached_per_revision_and_follows_writes(client, stored):
    first = client.get("/questions/map").json()
    again = client.get("/questions/map").json()
    assert again == first
    created = client.post(
        "/questions", json={"text": "Can I pay with my watch?", "metadata": {"category": "wearables"}}
    ).json()
    after = client.get("/questions/map").json()
    assert after["revision"] > first["revision"]
    assert created["id"] in {p["id"] for p in after["points"]}
    assert {p["label"] for p in after["points"] if p["id"] == created["id"]} == {"wearables"}
    client.patch(f"/questions/{created['id']}", json={"metadata": {"tier": "gold"}})
    patched = client.get("/questions/map").json()
    assert {p["label"] for p in patched["points"] if p["id"] == created["id"]} == {None}
    assert patched["color_keys"] == ["category", "tier"]
    tier = client.get("/questions/map", params={"color_by": "tier"}).json()
    assert tier["color_key"] == "tier"
    assert {p["label"] for p in tier["points"]} == {None, "gold"}


def test_map_unknown_colour_key_is_a_422_listing_the_keys(client, stored):
    response = client.get("/questions/map", params={"color_by": "tenant"})
    assert response.status_code == 422
    assert "'tenant'" in response.json()["detail"] and "'category'" in response.json()["detail"]
    assert client.get("/questions/map", params={"color_by": ""}).status_code == 422


def test_map_of_an_empty_collection(client):
    body = client.get("/questions/map").json()
    assert body["points"] == [] and body["total"] == 0 and body["color_key"] is None


def test_map_samples_large_collections(database_url, tiny_model_dir, tmp_path, tiny_corpus_rows):
    settings = make_settings(database_url, tiny_model_dir, tmp_path, map_max_points=40)
    client = start_client(settings)
    try:
        rows = [{"text": row["text"]} for row in tiny_corpus_rows[:120]]
        assert client.post("/questions/bulk", json={"questions": rows}).status_code == 201
        body = client.get("/questions/map").json()
        assert body["total"] == 120 and body["sampled"] == 40
        assert body["color_key"] is None and all(p["label"] is None for p in body["points"])
        # The sample is stable: more questions displace only some of it.
        more = [{"text": f"{row['text']} (again)"} for row in tiny_corpus_rows[120:160]]
        client.post("/questions/bulk", json={"questions": more})
        later = client.get("/questions/map").json()
        kept = {p["id"] for p in body["points"]} & {p["id"] for p in later["points"]}
        assert later["sampled"] == 40 and len(kept) >= 20
    finally:
        client.__exit__(None, None, None)


def test_sample_ids_and_pca_helpers():
    ids = np.arange(1, 10_001, dtype=np.int64)
    chosen = sample_ids(ids, 500)
    assert len(chosen) == 500 and len(set(chosen.tolist())) == 500 and np.all(np.diff(chosen) > 0)
    assert np.array_equal(sample_ids(ids, 500), chosen)
    # Spread over the id range, not the first 500.
    assert chosen.min() < 1000 and chosen.max() > 9000
    assert np.array_equal(sample_ids(ids[:10], 500), ids[:10])
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 8)) * np.array([5, 2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    center, components, explained = pca_2d(points)
    assert abs(components[0][0]) > 0.99 and abs(components[1][1]) > 0.99
    assert explained[0] > explained[1] > 0.1
    _, flat, share = pca_2d(np.ones((5, 3)))
    assert np.all(flat == 0) and np.all(share == 0)
    _, _, share = pca_2d(np.zeros((1, 3)))
    assert np.all(share == 0)
