"""Fixtures for browser tests: Debian's Chromium driven by Playwright's sync API.

Playwright never downloads a browser here: ``browser`` launches the system's
``/usr/bin/chromium`` (``scripts/ensure-test-deps.sh`` installs Debian's package), with
``--no-sandbox`` when running as root, where Chromium's sandbox cannot start.

Tests are plain sync functions taking ``page`` (a fresh context each: its own
sessionStorage and cookies). Relays and agents come from ``cluster``, the e2e harness;
its coroutines run through ``run`` (see harness.py for why not in this thread).

``browser`` lives for this package rather than the session: Playwright leaves its loop
marked as running in the main thread until it stops, which would break every async test
that pytest-asyncio runs after this package.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.browser.harness import LoopThread
from tests.e2e.harness import Cluster
from tests.servers import start_valkey

if TYPE_CHECKING:
    from collections.abc import Iterator

CHROMIUM = Path("/usr/bin/chromium")

# Conditions in the page (an agent connecting, the next poll) take a few seconds on a
# busy machine; assertions wait for them up to this long, and no longer.
expect.set_options(timeout=10_000)


@pytest.fixture(scope="session")
def browser_valkey_url(tmp_path_factory):
    # Session-scoped and sync: started in the main thread before any browser opens.
    url, stop = start_valkey(tmp_path_factory.mktemp("valkey-browser"))
    yield url
    stop()


@pytest.fixture(scope="package")
def browser(browser_valkey_url) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-test-deps.sh (apt chromium)")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="package")
def harness_loop():
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def run(harness_loop):
    """Run a coroutine of the e2e harness (``run(relay.add_host("x"))``) and return its result."""
    return harness_loop.run


@pytest.fixture
def cluster(tmp_path, browser_valkey_url):
    c = Cluster(tmp_path, browser_valkey_url, prefix=f"ui{secrets.token_hex(4)}")
    yield c
    c.stop()
