"""When the garbage collector runs in a relay that holds tens of thousands of tunnels.

CPython's full (generation 2) collection walks every object it tracks. A held tunnel
keeps about 70 of them alive for hours, so at 20,000 tunnels each full collection walks
~1.5 million objects and stops the event loop for a second or more, and finds nothing
to free among them. The default trigger (long-lived objects grew by 25 %) fires again
and again while tunnels arrive, and later whenever transient objects pile up.

So the objects of held tunnels are moved out of the collector's sight
(:func:`gc.freeze`) once they have settled, and brought back only when there may be
garbage among them:

* At startup, after the app is built: collect, then freeze (modules, config, app).
* Whenever the number of tunnels ever added has grown by ``step`` since the last freeze:
  collect the young generations (cheap), then freeze. The collector keeps working as
  usual on everything newer, and its full collections stay short.
* A tunnel that closes may leave cyclic garbage among frozen objects. Once the tunnels
  closed since the last cleanup reach ``max(step, held / 4)`` (the same 25 % CPython
  uses), unfreeze, run one full collection and freeze again: one pause, like CPython's
  own, but only when tunnels actually went away.

Each freeze and cleanup is logged with its duration and what it froze or freed.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from relay.tunnel import LocalTunnels

__all__ = ["GcPolicy"]


class GcPolicy:
    """Freezes settled tunnel objects; cleans up after tunnels close. See the module doc."""

    def __init__(
        self,
        tunnels: LocalTunnels,
        log: FilteringBoundLogger,
        *,
        step: int = 1000,
        tick: float = 1.0,
    ) -> None:
        self._tunnels = tunnels
        self._log = log
        self._step = step
        self._tick = tick
        self._added_at_freeze = 0
        self._removed_at_cleanup = 0

    def start(self) -> None:
        """Collect once and freeze what exists now (call once the app is built)."""
        started = time.perf_counter()
        freed = gc.collect()
        gc.freeze()
        self._added_at_freeze = self._tunnels.added_total
        self._removed_at_cleanup = self._tunnels.removed_total
        self._log.info(
            "gc.startup_freeze",
            frozen=gc.get_freeze_count(),
            freed=freed,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def run(self) -> None:
        """Check every ``tick`` seconds, for the life of the relay."""
        while True:
            await asyncio.sleep(self._tick)
            self.check()

    def check(self) -> str | None:
        """Freeze or clean up if due; returns what was done ("freeze", "cleanup") or None."""
        tunnels = self._tunnels
        closed = tunnels.removed_total - self._removed_at_cleanup
        if closed >= max(self._step, len(tunnels) // 4):
            self._cleanup(closed)
            return "cleanup"
        if tunnels.added_total - self._added_at_freeze >= self._step:
            self._freeze()
            return "freeze"
        return None

    def _freeze(self) -> None:
        started = time.perf_counter()
        before = gc.get_freeze_count()
        gc.collect(1)  # young garbage is not worth freezing
        gc.freeze()
        self._added_at_freeze = self._tunnels.added_total
        self._log.info(
            "gc.frozen",
            tunnels=len(self._tunnels),
            objects=gc.get_freeze_count() - before,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _cleanup(self, closed: int) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self._removed_at_cleanup = self._tunnels.removed_total
        self._added_at_freeze = self._tunnels.added_total
        self._log.info(
            "gc.cleanup",
            tunnels=len(self._tunnels),
            closed_since_last=closed,
            freed=freed,
            frozen=gc.get_freeze_count(),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
