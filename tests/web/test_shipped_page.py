"""The desk page on the shipped model (models/default) over the bundled BANKING77 questions, as
`make run` serves it: the matches are the API's, the grid and the map are drawn, nothing leaves the
service, and the page fits 1280 px and 390 px. The screenshots are the README's
(`python -m tests.web.screenshot --out docs` writes them there)."""

from __future__ import annotations

import httpx
import pytest

from tests.web.screenshot import QUESTION, capture, start_shipped_service

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def shipped_service(tmp_path_factory):
    service = start_shipped_service(tmp_path_factory.mktemp("shipped"))
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_page_on_the_shipped_model(chromium, shipped_service, tmp_path, width):
    shot = capture(chromium, shipped_service.base, width, tmp_path / f"shipped-{width}.png")
    print(f"screenshot: {shot.path}")
    assert shot.refused == [] and shot.errors == [], (shot.refused, shot.errors)
    assert shot.fit["scrollWidth"] <= shot.fit["clientWidth"] and shot.fit["overflowing"] is None, shot.fit
    answer = httpx.post(f"{shipped_service.base}/questions/similar", json={"question": QUESTION}, timeout=60).json()
    assert len(answer["results"]) >= 3
    assert shot.shown == [r["id"] for r in answer["results"]]
    mapped = httpx.get(f"{shipped_service.base}/questions/map", timeout=300).json()
    assert mapped["total"] == 10_003 and mapped["sampled"] == shot.map_points == 3000
    assert mapped["color_key"] == "category"
    k = answer["model"]["samples"]
    assert shot.grid_cells == k * k and shot.samples_drawn == k
    assert shot.path.stat().st_size > 50_000


def test_threshold_zero_finds_an_exact_repeat_on_the_shipped_model(shipped_service):
    """vMF codes are compared by 1 - cos, which puts identical codes ~1e-16 apart, not 0: a desk
    asking for exact repeats only (threshold 0) still gets the stored question with the same text."""
    k = 5
    stored = httpx.get(f"{shipped_service.base}/questions", params={"limit": 1}, timeout=60).json()["items"][0]
    request = {"question": stored["text"], "threshold": 0, "min_pairs": k, "limit": 3}
    answer = httpx.post(f"{shipped_service.base}/questions/similar", json=request, timeout=60).json()
    assert answer["model"]["metric"] == "cosine" and answer["model"]["samples"] == k
    assert answer["results"] and answer["results"][0]["text"] == stored["text"], answer
    assert answer["results"][0]["pairs_within"] >= k
