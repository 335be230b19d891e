"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, headless and kept
off the network (no browser of Playwright's own is ever downloaded; `./dev test` installs
Chromium with apt-get when it is missing).  Screenshots go to ``facestream-out/screenshots/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "facestream-out" / "screenshots"
# Headless, no sandbox (the tests run as root), and nothing that phones home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("the browser tests need Debian's chromium at /usr/bin/chromium: "
                    "run ./dev test (installs it) or apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own context: no cookies or storage shared between tests) whose
    console errors and uncaught exceptions are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: page.errors.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    try:
        yield page
    finally:
        context.close()


def screenshot(page, name: str) -> Path:
    """Saves the page as ``facestream-out/screenshots/{name}.png`` and returns the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
