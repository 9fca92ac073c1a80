"""Brief memory of the directory's answers for requests whose host is held elsewhere.

A machine without a host's tunnel asks the store three things per request (slug to
host id, the owner, the owner's machine record), and on Fly that is most requests of a
fleet. The owner is always read fresh: it changes on every reconnect and a stale one
would send a replay to the wrong machine. The other two change rarely and harmlessly:

- slug to host id changes only when a host is removed (and its slug perhaps taken
  again). The removed host has no owner, so a stale id can only lead to "offline": the
  caller then reads the slug again (:meth:`RouteCache.forget`) before it answers 503.
  Only found slugs are kept, so a host created a moment ago is never reported unknown.
- a machine record changes state (draining, stopped) on a drain; a replay to a machine
  that stopped within :data:`MACHINE_TTL` is answered by that machine's successor check
  like any late replay (the owner key, read fresh, has moved by then).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from directory.hosts import HostRegistry
    from directory.machines import MachineRecord, MachineRegistry

__all__ = ["MACHINE_TTL", "SLUG_TTL", "RouteCache", "TtlCache"]

K = TypeVar("K")
V = TypeVar("V")

SLUG_TTL = 2.0
MACHINE_TTL = 1.0
#: Entries kept at most per cache: a flood of distinct slugs cannot grow it further.
MAX_ENTRIES = 10_000


class TtlCache(Generic[K, V]):
    """A bounded map whose entries expire ``ttl`` seconds after they were put."""

    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K, now: float) -> V | None:
        """The value put for ``key`` less than ``ttl`` ago, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[0] >= self.ttl:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, now: float) -> None:
        """Remember ``value``; the oldest entry goes when the cache is full."""
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self.max_entries:
            del entries[next(iter(entries))]  # insertion order: the oldest put
        entries[key] = (now, value)

    def pop(self, key: K) -> bool:
        """Forget ``key``; whether it was there (expired or not)."""
        return self._entries.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._entries)


class RouteCache:
    """Slug to host id and machine records, read through the store when not fresh."""

    __slots__ = ("_clock", "_hosts", "_machines", "_records", "_slugs")

    def __init__(
        self,
        hosts: HostRegistry,
        machines: MachineRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hosts = hosts
        self._machines = machines
        self._clock = clock
        self._slugs: TtlCache[str, str] = TtlCache(SLUG_TTL)
        self._records: TtlCache[str, MachineRecord] = TtlCache(MACHINE_TTL)

    async def host_id(self, slug: str) -> str | None:
        """The id of the host holding ``slug`` (None: no such host)."""
        now = self._clock()
        host_id = self._slugs.get(slug, now)
        if host_id is None:
            host_id = await self._hosts.resolve_slug(slug)
            if host_id is not None:
                self._slugs.put(slug, host_id, now)
        return host_id

    def forget(self, slug: str) -> bool:
        """Drop the slug's remembered host id; whether there was one to drop."""
        return self._slugs.pop(slug)

    async def machine(self, machine_id: str) -> MachineRecord | None:
        """The machine's live record (None: it expired, the machine is gone)."""
        now = self._clock()
        record = self._records.get(machine_id, now)
        if record is None:
            record = await self._machines.get(machine_id)
            if record is not None:
                self._records.put(machine_id, record, now)
        return record
