"""When the garbage collector runs in a relay that holds tens of thousands of tunnels.

CPython's full (generation 2) collection walks every object it tracks. A held tunnel
keeps about 60 of them alive for hours, and about 10 more are made anew each time it
receives a message (the pending read), so at 20,000 tunnels a full collection walks
over a million objects, stops the event loop for a second, and frees nothing; and the
default trigger (long-lived objects grew by 25 %) fires every few seconds, fed by those
per-message objects alone.

So what survives the young collections is moved out of the collector's sight
(:func:`gc.freeze`) and brought back only when there may be garbage among it:

* At startup, after the app is built: collect, then freeze (modules, config, app).
* Every ``tick``: collect the young generations (cheap; most garbage dies there), then
  freeze the survivors. Objects that die by reference counting, as nearly all do, are
  freed as usual, frozen or not; only reference cycles need a collection.
* Cleanup, one full collection over everything (unfreeze, collect, freeze), when there
  may be cycles to free: once the tunnels closed since the last cleanup reach
  ``max(step, held / 4)``, or when the frozen objects grew by a quarter since it
  (checked every ``audit_every`` ticks: counting them walks them). That is CPython's
  own 25 % rule, applied where garbage can actually be.

Cleanups and tunnel-count milestones are logged with their duration.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from relay.machine.tunnels import LocalTunnels

__all__ = ["GcPolicy"]


class GcPolicy:
    """Freezes what survives young collections; cleans up when cycles may be left."""

    def __init__(
        self,
        tunnels: LocalTunnels,
        log: FilteringBoundLogger,
        *,
        step: int = 1000,
        tick: float = 1.0,
        audit_every: int = 60,
    ) -> None:
        self._tunnels = tunnels
        self._log = log
        self._step = step
        self._tick = tick
        self._audit_every = audit_every
        self._ticks = 0
        self._added_at_log = 0
        self._removed_at_cleanup = 0
        self._frozen_at_cleanup = 0

    def start(self) -> None:
        """Collect once and freeze what exists now (call once the app is built)."""
        self._cleanup("startup")

    async def run(self) -> None:
        """Check every ``tick`` seconds, for the life of the relay."""
        while True:
            await asyncio.sleep(self._tick)
            self.check()

    def check(self) -> str:
        """One tick: "cleanup" if one was due, else "freeze"."""
        self._ticks += 1
        tunnels = self._tunnels
        closed = tunnels.removed_total - self._removed_at_cleanup
        if closed >= max(self._step, len(tunnels) // 4):
            self._cleanup("tunnels_closed")
            return "cleanup"
        audit = self._ticks % self._audit_every == 0
        if audit and gc.get_freeze_count() > self._frozen_at_cleanup * 5 // 4:
            self._cleanup("frozen_grew")
            return "cleanup"
        gc.collect(1)  # young garbage is freed, not frozen
        gc.freeze()
        if tunnels.added_total - self._added_at_log >= self._step:
            self._added_at_log = tunnels.added_total
            self._log.info("gc.freezing", tunnels=len(tunnels))
        return "freeze"

    def _cleanup(self, why: str) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self._frozen_at_cleanup = gc.get_freeze_count()
        closed = self._tunnels.removed_total - self._removed_at_cleanup
        self._removed_at_cleanup = self._tunnels.removed_total
        self._log.info(
            "gc.cleanup",
            why=why,
            tunnels=len(self._tunnels),
            closed_since_last=closed,
            freed=freed,
            frozen=self._frozen_at_cleanup,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
