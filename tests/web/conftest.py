"""Fixtures of the desk page tests: the real service (a process on the tiny model, holding the tiny
corpus with categories, answers for half of it and external ids), and chromium pages whose every
request is checked to stay on that service."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.reliability.service_process import ServiceProcess, service_env
from tests.web.browser import WIDTHS, RequestLog, chromium_missing, launch


def stored_rows(rows: list[dict]) -> list[dict]:
    """The tiny corpus as the page tests store it: every other question has an answer."""
    return [
        {
            "text": row["text"],
            "external_id": f"desk-{i}",
            "answer": f"Answer {i}: see the {row['category'].replace('_', ' ')} guide." if i % 2 == 0 else None,
            "metadata": {"category": row["category"]},
        }
        for i, row in enumerate(rows)
    ]


@pytest.fixture(scope="session")
def desk_service(tiny_model_dir, tiny_corpus_rows, tmp_path_factory) -> Iterator[ServiceProcess]:
    """qsim itself (docker/entrypoint.sh: migrations, then uvicorn) on its own SQLite database."""
    tmp = tmp_path_factory.mktemp("desk-service")
    service = ServiceProcess(service_env(tmp, tiny_model_dir), tmp / "service.log").start()
    try:
        response = httpx.post(
            f"{service.base}/questions/bulk", json={"questions": stored_rows(tiny_corpus_rows)}, timeout=120
        )
        assert response.status_code == 201, response.text
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def desk_api(desk_service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=desk_service.base, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    # chromium is here, so the dev extra must have brought Playwright: failing, not skipping, says so.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, base: str, width: str = "desktop"):
    w, h = WIDTHS[width]
    context = browser.new_context(viewport={"width": w, "height": h}, base_url=base)
    log = RequestLog(base)
    log.attach(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    return context, page, log, errors


@pytest.fixture
def desk_page(chromium, desk_service):
    """A fresh browser context at desktop width on the service; after the test, nothing may have
    left the service's origin and the page may have logged no script error."""
    context, page, log, errors = open_page(chromium, desk_service.base)
    page.request_log = log
    page.script_errors = errors
    try:
        yield page
    finally:
        context.close()
    assert log.refused == [], f"the page tried to reach outside the service: {log.refused}"
    assert errors == [], f"script errors on the page: {errors}"
