"""The DNS service of one relay machine: lifecycle, loops, and what the API asks of it.

Loops (managed mode only; wildcard mode writes nothing and runs nothing):

* the **worker** pops dirty hosts in batches and converges them (every machine runs one;
  a local mark wakes it at once, marks from other machines are seen within
  ``poll_interval``);
* the **leader** (one machine at a time, by a lease in the store) sweeps, marking every
  host dirty each ``sweep_interval`` (this is what removes records once a host has been
  offline longer than the grace, and repairs anything a lost event missed), and runs a
  full sync each ``sync_interval``.

Events reach :meth:`DnsService.handle_events`, which only marks hosts dirty.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec

from directory.consumer import StreamConsumer
from directory.dns.context import DnsContext
from directory.dns.inputs import read_hosts, read_liveness, wanted
from directory.dns.records import DnsRecord, describe, normalize_name
from directory.dns.state import DnsState, DnsStateStore
from directory.dns.sync import Syncer, SyncReport
from directory.dns.worker import Converger
from directory.dns.writer import DnsWriter
from directory.errors import DirectoryError, DnsConflict, DnsDisabled, DnsRecordNotFound
from directory.events import DnsWriteFailed, DnsWriteSucceeded
from directory.store import translate_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from structlog.typing import FilteringBoundLogger

    from directory.dns.provider import DnsProvider
    from directory.dns.ratelimit import RateLimiter
    from directory.dns.settings import DnsSettings
    from directory.dns.telemetry import DnsMetrics
    from directory.events import AnyEvent
    from directory.keys import Keys
    from directory.ownership import OwnershipStore
    from directory.presence import PresenceStore
    from directory.store import StoreClient

__all__ = ["DNS_GROUP", "DnsService", "HostDnsStatus", "ZoneRecord"]

DNS_GROUP = "dns"

_IDLE_BACKOFF_CAP = 5.0
_CLOSE_TIMEOUT = 5.0


class HostDnsStatus(msgspec.Struct, frozen=True):
    """A host's DNS status as the API shows it (``last_error_at`` in unix seconds)."""

    state: DnsState
    records: list[str]
    last_error: str | None = None
    last_error_at: float | None = None


class ZoneRecord(msgspec.Struct, frozen=True):
    """A record of a managed zone as ``GET /api/dns/records`` shows it."""

    zone: str
    name: str
    type: str
    content: str
    ttl: int
    ours: bool
    proxied: bool | None = None


class DnsService:
    """Owns the providers, the loops and the store keys of the DNS work."""

    def __init__(  # noqa: PLR0913 - the composition root of the DNS work
        self,
        *,
        settings: DnsSettings,
        redis: StoreClient,
        keys: Keys,
        ownership: OwnershipStore,
        presence: PresenceStore | None,
        providers: Mapping[str, DnsProvider],
        limiter: RateLimiter,
        metrics: DnsMetrics,
        log: FilteringBoundLogger,
        holder: str,
        emit: Callable[[AnyEvent], None] | None = None,
        poll_interval: float = 0.25,
        consume_events: bool = False,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.providers = dict(providers)
        self.states = DnsStateStore(redis, keys)
        self._redis = redis
        self._keys = keys
        self._ownership = ownership
        self._presence = presence
        self._log = log
        self._holder = holder
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._consumer: StreamConsumer | None = None
        if consume_events:
            # Group "dns": one member per machine; each event reaches one of them, and all
            # it does is mark the host dirty in the shared set. "$": a new group starts at
            # the end of the log, since the first sweep marks every host anyway.
            self._consumer = StreamConsumer(
                redis, keys, DNS_GROUP, holder, batch_handler=self.handle_events, start_id="$"
            )
        self.writer = DnsWriter(
            settings=settings, states=self.states, metrics=metrics, limiter=limiter,
            log=log, emit=emit,
        )  # fmt: skip
        self.context = DnsContext(
            settings=settings, redis=redis, keys=keys, ownership=ownership, presence=presence,
            providers=self.providers, states=self.states, writer=self.writer, metrics=metrics,
            log=log,
        )  # fmt: skip
        self.converger = Converger(self.context, holder=holder)
        self.syncer = Syncer(self.context, holder=holder)

    @property
    def consumer(self) -> StreamConsumer | None:
        """The machine's member of the ``dns`` consumer group (running in managed mode)."""
        return self._consumer if self.settings.managed else None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loops (managed mode); in wildcard mode say which record to create."""
        if self._closed:
            raise RuntimeError("the DNS service is closed")
        if not self.settings.managed:
            self._log.info("dns.wildcard_mode", record=self.settings.wildcard_record())
            return
        self._log.info(
            "dns.managed_mode",
            zones=self.settings.zones(),
            providers=sorted({p.name for p in self.providers.values()}),
            targets=[f"{t.type} {t.content}" for t in self.settings.targets],
        )
        self._tasks = [
            asyncio.create_task(self._worker_loop(), name="dns-worker"),
            asyncio.create_task(self._leader_loop(), name="dns-leader"),
        ]
        if self._consumer is not None:
            self._consumer.start()

    async def aclose(self) -> None:
        """Stop the loops and close the providers; the service refuses use afterwards."""
        self._closed = True
        # The loops also stop on their own when they see the flag: redis-py (8.1, asyncio)
        # can swallow a task's cancellation mid-command, and the task then runs on.
        self._stopping.set()
        self._wake.set()
        if self._consumer is not None:
            await self._consumer.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # asyncio.wait neither raises on its timeout nor swallows our own cancellation.
            _, pending = await asyncio.wait(self._tasks, timeout=_CLOSE_TIMEOUT)
            if pending:
                self._log.warning("dns.close_timeout", tasks=sorted(t.get_name() for t in pending))
        self._tasks = []
        for provider in self.providers.values():
            await provider.aclose()

    # -- marking -------------------------------------------------------------------------

    async def mark_dirty(self, host_ids: Sequence[str]) -> None:
        """Ask for these hosts to be converged soon; never raises (the sweep backs it up)."""
        if not self.settings.managed or not host_ids:
            return
        try:
            await self.states.mark_dirty(host_ids)
        except DirectoryError as exc:
            self._log.warning("dns.mark_dirty_failed", hosts=len(host_ids), error=str(exc))
            return
        self._wake.set()

    async def handle_events(self, entries: Sequence[tuple[str, AnyEvent]]) -> None:
        """Consumer-group handler: events about hosts mark them dirty, nothing more.

        A store failure propagates, so the consumer keeps the entries for a retry.
        """
        ids = sorted({h for _, event in entries if (h := _host_of(event))})
        if ids and self.settings.managed:
            await self.states.mark_dirty(ids)
            self._wake.set()

    # -- what the API asks ---------------------------------------------------------------

    async def statuses(self, host_ids: Sequence[str]) -> dict[str, HostDnsStatus]:
        """The DNS status of each host (wildcard mode: ``disabled``, no store read)."""
        if not self.settings.managed:
            return {h: HostDnsStatus("disabled", []) for h in host_ids}
        stored = await self.states.get_many(host_ids)
        result: dict[str, HostDnsStatus] = {}
        for host_id in host_ids:
            state = stored.get(host_id)
            if state is None:
                result[host_id] = HostDnsStatus("pending", [])
                continue
            result[host_id] = HostDnsStatus(
                state.state,
                describe(state.records or ()),
                state.last_error,
                state.last_error_at,
            )
        return result

    async def sync(self, *, dry_run: bool = False) -> SyncReport:
        """A full sync now (``POST /api/dns/sync``)."""
        self._require_managed()
        return await self.syncer.sync(dry_run=dry_run)

    async def records(self) -> list[ZoneRecord]:
        """Every record of every managed zone, marked ours or not."""
        self._require_managed()
        marker = self.settings.marker
        found: list[ZoneRecord] = []
        for zone, provider in self.providers.items():
            found += [
                ZoneRecord(zone, r.name, r.type, r.content, r.ttl, r.is_ours(marker), r.proxied)
                for r in await self.writer.read(provider)
            ]
        return sorted(found, key=lambda r: (r.zone, r.name, r.type, r.content))

    async def delete_record(self, fqdn: str) -> list[DnsRecord]:
        """Delete our records at ``fqdn``: 404 if none, 409 if not ours or still wanted."""
        self._require_managed()
        name = normalize_name(fqdn)
        zone = next(
            (z for z in sorted(self.providers, key=len, reverse=True)
             if name == z or name.endswith("." + z)),
            None,
        )  # fmt: skip
        if zone is None:
            raise DnsRecordNotFound(f"{name} is in none of the managed zones")
        provider = self.providers[zone]
        present = [r for r in await self.writer.read(provider, name) if r.type != "SOA"]
        if not present:
            raise DnsRecordNotFound(f"no record at {name}")
        ours = [r for r in present if r.is_ours(self.settings.marker)]
        if not ours:
            raise DnsConflict(f"the records at {name} are not managed by this relay")
        holder = await self._wanted_by(name)
        if holder is not None:
            raise DnsConflict(
                f"{name} is still wanted by host {holder}; remove the host to remove its records"
            )
        outcome = await self.writer.apply(provider, deletes=ours)
        if outcome.failed:
            raise next(iter(outcome.failed.values()))
        self._log.info("dns.record_deleted", name=name, records=describe(ours))
        return ours

    # -- internals -----------------------------------------------------------------------

    def _require_managed(self) -> None:
        if not self.settings.managed:
            raise DnsDisabled(
                "DNS runs in wildcard mode (one *.<base-domain> record, nothing per host); "
                "start the relay with --dns-mode managed to manage records"
            )

    async def _wanted_by(self, name: str) -> str | None:
        """The host that wants records at ``name`` now, if any."""
        slug = name.split(".", 1)[0]
        raw = await self._redis.get(self._keys.slug(slug))
        if raw is None:
            return None
        host_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        hosts, _ = await read_hosts(self._redis, self._keys, [host_id])
        host = hosts.get(host_id)
        if host is None:
            return None
        liveness = await read_liveness(self._ownership, self._presence, [host])
        _, fqdn, records = wanted(self.settings, host, liveness.get(host_id), now=time.time())
        return host_id if fqdn == name and records else None

    async def _worker_loop(self) -> None:
        backoff = self._poll
        while not self._closed:
            try:
                ids = await self.states.pop_dirty(self.settings.batch_hosts)
                if ids:
                    result = await self.converger.converge(ids)
                    backoff = self._poll
                    if len(result.requeued) < len(ids):
                        continue
                    # All of them are being converged elsewhere: wait rather than spin.
            except DirectoryError as exc:
                # The store is down: the popped ids may be lost, the sweep marks them again.
                self._log.warning("dns.worker_store_error", error=str(exc))
                backoff = min(backoff * 2, _IDLE_BACKOFF_CAP)
            except Exception:  # noqa: BLE001 - a bug must not stop DNS for good: log, go on
                self._log.exception("dns.worker_failed")
                backoff = min(backoff * 2, _IDLE_BACKOFF_CAP)
            self._wake.clear()
            if not self._closed:
                await _nap(self._wake, backoff)

    async def _leader_loop(self) -> None:
        settings = self.settings
        tick = min(settings.sweep_interval, 5.0)
        lease_ms = int(max(settings.sweep_interval * 3, 15.0) * 1000)
        next_sweep = 0.0
        next_sync = time.monotonic() + settings.sync_interval
        while not self._closed:
            try:
                if await self.states.hold_lease(self._holder, lease_ms):
                    now = time.monotonic()
                    if now >= next_sweep:
                        next_sweep = now + settings.sweep_interval
                        await self.sweep()
                    if now >= next_sync:
                        next_sync = now + settings.sync_interval
                        await self.syncer.sync()
            except DirectoryError as exc:
                self._log.warning("dns.leader_store_error", error=str(exc))
            except Exception:  # noqa: BLE001 - a bug must not stop sweeps for good: log, go on
                self._log.exception("dns.leader_failed")
            await _nap(self._stopping, tick)

    async def sweep(self) -> int:
        """Mark every host (registered, or with DNS state left) dirty; returns how many."""
        with translate_errors("list hosts for the DNS sweep"):
            raw = await self._redis.zrange(self._keys.hosts_index(), 0, -1)
        registered = {i.decode() if isinstance(i, bytes) else str(i) for i in raw}
        ids = sorted(registered | set(await self.states.tracked()))
        await self.mark_dirty(ids)
        return len(ids)


def _host_of(event: AnyEvent) -> str | None:
    """The host an event is about, if it can change that host's records."""
    if isinstance(event, DnsWriteSucceeded | DnsWriteFailed):
        return None  # our own reports; reacting to them would loop
    host_id = getattr(event, "host_id", None)
    return host_id if isinstance(host_id, str) and host_id else None


async def _nap(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, whichever comes first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
