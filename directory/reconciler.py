"""The presence reconciler: an "online" host whose owner key is gone gets a Disconnected.

A machine that dies without draining (SIGKILL, a host crash) never reports its tunnels'
ends; their owner keys simply expire (DESIGN "Ownership"). Each pass, the reconciler
compares the presence projection with the live owner keys and appends
``Disconnected(reason="owner_expired")`` for every host that presence shows online while
no owner key exists. Rules:

* One machine at a time runs passes: a :class:`Lease` in the store (``p:lease:<name>``),
  renewed at every pass and released on close, expiring on its own (two intervals) when
  its holder dies.
* Fail open: an error reading presence or ownership skips the whole pass (counted in
  ``relay_presence_reconcile_total{result="error"}`` and logged). Never act on a partial view.
* Before acting it waits ``settle`` seconds and looks again: a tunnel that closed a moment
  ago released its key and its own Disconnected (with the true reason) is on its way.
  Should the guess still race the truth, the fold prefers the machine's own reason.
* A host held under a *newer* epoch than presence knows is left alone: its Connected is
  on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Literal

import msgspec
import structlog

from directory._scripts import LuaScript
from directory.errors import DirectoryError
from directory.events import Disconnected
from directory.stats import STATS, Stats
from directory.store import translate_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from directory.events import EventLog
    from directory.keys import Keys
    from directory.ownership import OwnershipStore
    from directory.presence import Presence, PresenceStore
    from directory.store import StoreClient

__all__ = ["Lease", "PresenceReconciler", "ReconcileResult"]

LEASE_NAME = "presence-reconciler"
# Owner keys read per MGET.
_CHUNK = 1000

_log = structlog.get_logger("directory.reconciler")

# KEYS: lease. ARGV: holder, ttl_ms. Take the lease if free, extend it if ours.
_ACQUIRE = LuaScript(
    "lease_acquire",
    """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""",
)

# KEYS: lease. ARGV: holder. Release only our own lease.
_RELEASE = LuaScript(
    "lease_release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)


class Lease:
    """A named lease: at most one ``holder`` at a time, expiring ``ttl`` s after renewal."""

    def __init__(self, redis: StoreClient, keys: Keys, name: str, holder: str, ttl: float) -> None:
        self._redis = redis
        self._key = keys.lease(name)
        self.holder = holder
        self._ttl_ms = max(1, int(ttl * 1000))

    async def acquire(self) -> bool:
        """Take or renew the lease; True while we hold it."""
        with translate_errors(f"acquire lease {self._key}"):
            return bool(await _ACQUIRE(self._redis, [self._key], [self.holder, self._ttl_ms]))

    async def release(self) -> None:
        """Give the lease up if we hold it, so another machine takes over at once."""
        with translate_errors(f"release lease {self._key}"):
            await _RELEASE(self._redis, [self._key], [self.holder])


class ReconcileResult(msgspec.Struct, frozen=True):
    """What one pass did: ``expired`` lists the hosts it marked offline."""

    result: Literal["ok", "not_leader", "error"]
    checked: int = 0
    expired: list[str] = msgspec.field(default_factory=list)


class PresenceReconciler:
    """Compares presence with ownership every ``interval`` s, under a lease.

    Lifecycle: :meth:`start` once, :meth:`close` once (releases the lease).
    :meth:`run_pass` runs one pass (tests, tools).
    """

    def __init__(  # noqa: PLR0913 - collaborators and knobs, all named
        self,
        *,
        redis: StoreClient,
        keys: Keys,
        ownership: OwnershipStore,
        presence: PresenceStore,
        events: EventLog,
        machine_id: str,
        interval: float,
        settle: float | None = None,
        stats: Stats = STATS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._ownership = ownership
        self._presence = presence
        self._events = events
        self._interval = interval
        self._settle = min(0.25, interval / 2) if settle is None else settle
        self._lease = Lease(redis, keys, LEASE_NAME, machine_id, ttl=2 * interval + self._settle)
        self._stats = stats
        self._sleep = sleep  # the settle wait (injectable: tests act inside it)
        self._task: asyncio.Task[None] | None = None
        self._state = "new"
        self._log = _log.bind(machine_id=machine_id)

    def start(self) -> asyncio.Task[None]:
        """Run passes every ``interval`` in a background task (once)."""
        if self._state != "new":
            raise RuntimeError(f"the reconciler is {self._state}")
        self._state = "running"
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reconciler")
        return self._task

    async def close(self) -> None:
        """Stop, and release the lease if held. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._lease.release()
        except DirectoryError as exc:
            # The lease expires on its own within two intervals.
            self._stats.incr("relay_presence_reconcile_total", result="lease_release_failed")
            self._log.warning("presence.lease_release_failed", error=str(exc))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_pass()
            except Exception:  # noqa: BLE001 - a bug in one pass must not end the schedule
                self._stats.incr("relay_presence_reconcile_total", result="crashed")
                self._log.exception("presence.reconcile_crashed")

    async def run_pass(self) -> ReconcileResult:
        """One pass: compare, and report owner-expired hosts. Never raises store errors."""
        try:
            if not await self._lease.acquire():
                self._stats.incr("relay_presence_reconcile_total", result="not_leader")
                return ReconcileResult("not_leader")
            online = [p for p in (await self._presence.all()).values() if p.online]
            orphans = await self._orphans(online)
            if orphans:
                # Let a tunnel that closed just now report its own reason first.
                await self._sleep(self._settle)
                fresh = await self._presence.get_many([p.host_id for p in orphans])
                still = [p for p in orphans if fresh.get(p.host_id) == p]
                orphans = await self._orphans(still)
        except DirectoryError as exc:
            # Fail open: a partial or failed read must never mark anyone offline.
            self._stats.incr("relay_presence_reconcile_total", result="error")
            self._log.warning("presence.reconcile_skipped", error=str(exc))
            return ReconcileResult("error")
        try:
            expired = await self._report(orphans)
        except DirectoryError as exc:
            # Nothing was decided for good: the next pass finds the same hosts again.
            self._stats.incr("relay_presence_reconcile_total", result="error")
            self._log.warning("presence.reconcile_append_failed", error=str(exc))
            return ReconcileResult("error", checked=len(online))
        self._stats.incr("relay_presence_reconcile_total", result="ok")
        return ReconcileResult("ok", checked=len(online), expired=expired)

    async def _orphans(self, online: list[Presence]) -> list[Presence]:
        """The online hosts with no owner key at all."""
        orphans: list[Presence] = []
        for start in range(0, len(online), _CHUNK):
            chunk = online[start : start + _CHUNK]
            owners = await self._ownership.owners([p.host_id for p in chunk])
            orphans += [p for p in chunk if owners.get(p.host_id) is None]
        return orphans

    async def _report(self, orphans: list[Presence]) -> list[str]:
        if not orphans:
            return []
        events = [
            Disconnected(
                host_id=p.host_id,
                machine_id=p.machine_id or "unknown",
                epoch=p.epoch or 0,
                reason="owner_expired",
            )
            for p in orphans
        ]
        await self._events.append_many(events)
        self._stats.incr("relay_presence_owner_expired_total", len(events))
        for p in orphans:
            self._log.info(
                "presence.owner_expired", host_id=p.host_id, machine=p.machine_id, epoch=p.epoch
            )
        return [p.host_id for p in orphans]
