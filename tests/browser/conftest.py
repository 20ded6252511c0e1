"""Fixtures of the browser tests: the system Chromium driven by Playwright, and a live Etch.

Playwright cannot download its own browser here, so the tests launch Debian's ``chromium``
(``make browser`` installs it) through ``executable_path``, headless, without sandbox, GPU,
QUIC, first-run, background networking, component updates or sync, each run with a fresh
profile directory. Without the browser or Playwright the tests fail under ``CI=true`` and are
skipped with a message elsewhere.

Screenshots go to the test's temporary directory and, when ``BROWSER_ARTIFACTS`` names a
directory, are copied there as well.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.live import LiveStack

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
"""The system browser (Debian's ``chromium`` package)."""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _unavailable(reason: str) -> None:
    message = f"{reason}; run `make browser` (installs Debian's chromium and Playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {message}", pytrace=False)
    pytest.skip(message)


# Package scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, which would break every asyncio test collected after this package.
@pytest.fixture(scope="package")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The log and its three witnesses, serving the test data (see tests.browser.live)."""
    stack = LiveStack(tmp_path_factory.mktemp("live"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="package")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile, JavaScript on."""
    if not CHROMIUM.exists():
        _unavailable(f"no browser at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": 1200, "height": 900},
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    """A new tab, closed after the test."""
    tab = browser_context.new_page()
    try:
        yield tab
    finally:
        tab.close()


class Screenshots:
    """Saves full-page screenshots under the test's directory and ``BROWSER_ARTIFACTS``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        target = os.environ.get("BROWSER_ARTIFACTS")
        self.copy_to = Path(target) if target else None

    def take(self, page: Page, name: str) -> Path:
        """Screenshot ``page`` as ``<name>.png``; return the file written."""
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        if self.copy_to is not None:
            self.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self.copy_to / path.name)
        return path


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Screenshots:
    """Where the tests' screenshots go."""
    return Screenshots(tmp_path_factory.mktemp("screenshots"))
