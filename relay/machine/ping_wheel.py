"""One timer pings every tunnel a relay holds, instead of one timer per tunnel.

Tunnels sit in ``slots`` buckets; a tick every ``interval / slots`` visits the next
bucket, so each tunnel is visited once per interval and the work is spread evenly over
it. A bucket entry costs a few dozen bytes where a timer per tunnel cost ~600 (timer
handle, callback, arguments), tens of thousands of times over.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.machine.tunnels import Tunnel

__all__ = ["PingWheel"]


class PingWheel:
    """Calls :meth:`Tunnel.ping_due` on each added tunnel once per ``interval``."""

    def __init__(self, interval: float, misses: int, *, slots: int = 50) -> None:
        self.interval = interval
        self.misses = misses
        # dicts as ordered sets: removal is O(1) and a visit sees tunnels in arrival order
        self._slots: list[dict[Tunnel, None]] = [{} for _ in range(slots)]
        self._where: dict[Tunnel, int] = {}
        self._tick = interval / slots
        self._cursor = 0
        self._next_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._where)

    def start(self) -> None:
        """Start ticking (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._next_at = loop.time() + self._tick
        self._timer = loop.call_at(self._next_at, self.tick)

    def stop(self) -> None:
        """Stop ticking."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def add(self, tunnel: Tunnel) -> None:
        """Visit ``tunnel`` from one interval from now on."""
        # The bucket just visited comes round again after a whole interval.
        self._slots[self._cursor][tunnel] = None
        self._where[tunnel] = self._cursor

    def discard(self, tunnel: Tunnel) -> None:
        """Stop visiting ``tunnel`` (idempotent)."""
        slot = self._where.pop(tunnel, None)
        if slot is not None:
            del self._slots[slot][tunnel]

    @property
    def scheduled(self) -> bool:
        """Whether the next tick is scheduled (the wheel runs)."""
        return self._timer is not None

    def tick(self) -> None:
        """Visit the next slot and schedule the tick after (what the timer calls)."""
        self._cursor = (self._cursor + 1) % len(self._slots)
        loop = asyncio.get_running_loop()
        try:
            for tunnel in list(self._slots[self._cursor]):
                if not tunnel.ping_due(self.interval, self.misses):
                    self.discard(tunnel)
        finally:
            # Ticking must outlive a bug in one visit, or no tunnel is pinged again (the
            # loop's exception handler still reports the bug).
            # Scheduled from the previous deadline, not from now: no drift under load.
            self._next_at = max(self._next_at + self._tick, loop.time())
            self._timer = loop.call_at(self._next_at, self.tick)
