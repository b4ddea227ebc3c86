"""Debian's Chromium, driven through Playwright, for the browser tests (Playwright's own browser download
is not used). The flags keep it off this machine's closed network, which would otherwise refuse its
background connections.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def require_chromium() -> Any:
    """Skip the calling test module unless Chromium and Playwright are installed; return `playwright.sync_api`."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (CI installs it)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")


def launch_chromium(playwright: Any, *flags: str) -> Any:
    """Launch headless Chromium with the standard flags plus `flags`."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, *flags])


@contextmanager
def chromium_tab(width: int, height: int) -> Iterator[Any]:
    """A Chromium tab of the given size (15 s default timeout); the browser closes when the block ends."""
    sync_api = require_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = browser.new_page(viewport={"width": width, "height": height})
            tab.set_default_timeout(15_000)
            yield tab
        finally:
            browser.close()
