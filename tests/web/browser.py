"""The desk page in a real browser: Debian's chromium driven by Playwright (no browser download),
against the real service started as a process (tests/reliability/service_process.py).

Every request a page makes goes through `RequestLog`: requests to the service's own origin go on,
anything else is recorded and refused, so a test sees a page that tried to reach outside.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = Path(os.environ.get("QSIM_CHROMIUM", "/usr/bin/chromium"))
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def chromium_missing() -> str | None:
    """None when the browser tests can run, else why not (the message a skip gives)."""
    if not CHROMIUM.exists():
        how = (
            "`make test` installs it (apt-get install -y chromium) where apt-get is available and it runs as root "
            "or with sudo; otherwise install Debian's chromium package"
            if shutil.which("apt-get")
            else "this machine has no apt-get: install a chromium and point QSIM_CHROMIUM at it"
        )
        return f"browser tests skipped: no chromium at {CHROMIUM}; {how}"
    return None


def launch(playwright):
    """Headless chromium from the system; --no-sandbox because CI runs it as root."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class RequestLog:
    """Routes every request of a browser context: the service's origin passes, the rest is refused."""

    allowed_origin: str
    seen: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def attach(self, context) -> None:
        context.route("**/*", self._route)

    def _route(self, route) -> None:
        url = route.request.url
        self.seen.append(url)
        if origin(url) == self.allowed_origin:
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()

    def paths(self) -> list[str]:
        return [urlsplit(url).path for url in self.seen]


def no_sideways_scroll(page) -> dict:
    """Widths that matter for 'no sideways scroll': the document's and the viewport's, and the
    widest element sticking out past the viewport's right edge (none when it fits)."""
    return page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            let worst = null;
            for (const node of document.querySelectorAll('body *')) {
                const box = node.getBoundingClientRect();
                if (box.width === 0 || box.height === 0) continue;
                if (box.right > width + 1 && (!worst || box.right > worst.right)) {
                    worst = {tag: node.tagName, id: node.id, cls: node.className.baseVal ?? node.className, right: box.right};
                }
            }
            return {scrollWidth: document.documentElement.scrollWidth, clientWidth: width, overflowing: worst};
        }"""
    )
