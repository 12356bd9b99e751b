"""The desk page over the shipped model (models/default) and the bundled BANKING77 questions, in
chromium: the README's screenshot, and a check that the page works on the real thing.

    python -m tests.web.screenshot --out docs        # writes docs/screenshot.png and docs/screenshot-phone.png

It starts qsim as `make run` does (docker/entrypoint.sh: migrations, the bundled questions into a
new SQLite database, the index built), on a free port and a throwaway directory, asks the
README's question and opens the pair grid of the listed match with the fewest pairs within t
(the most telling one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT
from tests.reliability.service_process import ServiceProcess, service_env
from tests.web.browser import WIDTHS, RequestLog, chromium_missing, launch, no_sideways_scroll

QUESTION = "My new card still has not arrived"
SHIPPED_MODEL = ROOT / "models" / "default"


@dataclass
class Shot:
    width: str
    path: Path
    shown: list[int]
    status: str
    fit: dict
    refused: list[str]
    errors: list[str]
    map_points: int
    grid_cells: int
    samples_drawn: int


def start_shipped_service(workdir: Path) -> ServiceProcess:
    env = service_env(workdir, SHIPPED_MODEL, seed_on_empty="true")
    return ServiceProcess(env, workdir / "service.log").start(timeout=900)


def capture(browser, base: str, width: str, path: Path, question: str = QUESTION) -> Shot:
    w, h = WIDTHS[width]
    context = browser.new_context(viewport={"width": w, "height": h}, base_url=base, device_scale_factor=1)
    log = RequestLog(base)
    log.attach(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        page.goto("/")
        page.wait_for_selector("#map-points circle", timeout=300_000)
        page.fill("#question", question)
        page.press("#question", "Enter")
        page.wait_for_selector('#results[data-checked="true"]', state="attached", timeout=60_000)
        shown = page.eval_on_selector_all("#results [data-question-id]", "n => n.map(x => Number(x.dataset.questionId))")
        fewest = page.evaluate(
            """() => {
                let best = null;
                for (const item of document.querySelectorAll('#results [data-question-id]')) {
                    const within = Number(/(\\d+) of \\d+ pairs within/.exec(item.querySelector('.facts').textContent)[1]);
                    if (best === null || within < best.within) best = {id: item.dataset.questionId, within};
                }
                return best && best.id;
            }"""
        )
        if fewest is not None:
            page.click(f"#results [data-question-id='{fewest}'] .pick")
        page.wait_for_timeout(300)
        fit = no_sideways_scroll(page)
        page.evaluate("() => window.scrollTo(0, 0)")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        return Shot(
            width=width,
            path=path,
            shown=shown,
            status=page.text_content("#status"),
            fit=fit,
            refused=list(log.refused),
            errors=errors,
            map_points=page.locator("#map-points circle").count(),
            grid_cells=page.locator("#pair-grid tbody td").count(),
            samples_drawn=page.locator("#map-overlay path.sample").count(),
        )
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for screenshot.png and screenshot-phone.png")
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args(argv)
    reason = chromium_missing()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="qsim-screenshot-") as tmp:
        service = start_shipped_service(Path(tmp))
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                try:
                    for width, name in (("desktop", "screenshot.png"), ("phone", "screenshot-phone.png")):
                        shot = capture(browser, service.base, width, args.out / name, args.question)
                        print(f"{shot.path}: {len(shot.shown)} matches shown; {shot.status}")
                        if shot.refused or shot.errors:
                            print(f"  refused requests: {shot.refused}; script errors: {shot.errors}", file=sys.stderr)
                            return 1
                finally:
                    browser.close()
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
