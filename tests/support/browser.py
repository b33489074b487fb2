"""Debian's chromium driven by Playwright, for the dashboard's tests (integration and e2e).

Nothing is downloaded: Playwright drives /usr/bin/chromium (or a wrapper that execs it, e.g.
inside a network namespace), headless, with its background networking off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@contextlib.contextmanager
def chromium_context(executable: str = CHROMIUM) -> Iterator:
    """A browser context; console errors (a CSP refusal, a script error) fail the test.

    A refused status on purpose (403/404/401 answers) is logged by chromium as an error loading
    a resource and is not one of them.
    """
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1180, "height": 640})
        context.on("console", lambda m: m.type == "error" and errors.append(m.text))
        try:
            yield context
        finally:
            context.close()
            chromium.close()
    assert [e for e in errors if "Failed to load resource" not in e] == []
