"""The async end-to-end harness (tests/e2e/harness.py) made callable from sync tests.

Playwright's sync API runs its own event loop and marks it as the running loop of the
test's thread, so neither ``asyncio.run`` nor pytest-asyncio can run a coroutine there
while a browser is open. :class:`LoopThread` runs the harness's coroutines (starting a
relay, calling its API) on a loop in a thread of its own instead.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in its own thread; :meth:`run` waits for one coroutine on it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="browser-test-harness", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the loop's thread and return its result (or raise its error)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
