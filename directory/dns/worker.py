"""Level-triggered convergence of hosts' DNS records.

Events never write DNS. They only mark a host *dirty* (a set in the store, shared by all
machines); workers pop dirty hosts in batches and converge each to the records it should
have *now*, read from the projections (registry, ownership, presence). So a burst of
events for one host costs one converge, a lost event is repaired by the periodic sweep
(which marks every host dirty), and the order of events does not matter.

A converge compares the wanted records with the host's cached actual records
(:mod:`directory.dns.state`) and calls the provider only when they differ: a reconnect
changes nothing wanted, so it costs zero API calls. When the cache is unknown (first
write, or after a failure) the worker reads the provider at the host's name first, so it
never overwrites a record someone else owns there (that is a conflict: the host shows
``state=error`` and nothing is written).

Hosts are locked while converged (a short PX key), so two machines never write the same
host at once; a host locked elsewhere is put back as dirty.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

from directory.dns.inputs import HostInput, read_hosts, read_liveness, wanted
from directory.dns.plan import Plan, plan
from directory.dns.provider import Upsert
from directory.dns.records import describe
from directory.errors import DnsProviderError
from directory.store import translate_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from directory.dns.context import DnsContext
    from directory.dns.provider import DnsProvider
    from directory.dns.records import DnsRecord
    from directory.dns.state import HostDnsState
    from directory.dns.writer import WriteOutcome

__all__ = ["ConvergeResult", "Converger"]

# More cache misses than this in one zone and batch: list the zone once instead of
# reading each name (one call instead of many).
_PER_NAME_READS = 3


class ConvergeResult:
    """Counts of one converge batch (for logs and tests)."""

    def __init__(self) -> None:
        self.hosts = 0
        self.unchanged = 0
        self.written = 0
        self.failed = 0
        self.conflicts = 0
        self.deferred = 0
        self.requeued: list[str] = []
        self.failed_ids: list[str] = []


class _Job:
    """One host in a converge batch."""

    def __init__(self, host_id: str, host: HostInput | None, state: HostDnsState | None) -> None:
        self.host_id = host_id
        self.host = host
        self.state = state
        self.zone: str | None = None
        self.fqdn: str | None = None
        self.wanted: list[DnsRecord] = []
        self.actual: list[DnsRecord] | None = None


class Converger:
    """Converges batches of hosts; shared by the worker loop and the tests."""

    def __init__(
        self, ctx: DnsContext, *, holder: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._ctx = ctx
        self.clock = clock  # wall-clock time for graces (injectable: tests jump it)
        self._settings = ctx.settings
        self._redis = ctx.redis
        self._keys = ctx.keys
        self._ownership = ctx.ownership
        self._presence = ctx.presence
        self._providers = ctx.providers
        self._states = ctx.states
        self._writer = ctx.writer
        self._metrics = ctx.metrics
        self._log = ctx.log
        self._holder = holder

    async def converge(self, host_ids: Sequence[str]) -> ConvergeResult:
        """Bring these hosts' records to what they should be now."""
        result = ConvergeResult()
        ids = sorted(set(host_ids))
        locked = await self._states.lock(ids, self._holder, int(self._settings.lock_ttl * 1000))
        busy = sorted(set(ids) - set(locked))
        if busy:
            # Another machine converges them now; look again after it is done.
            await self._states.mark_dirty(busy)
            result.requeued = busy
        try:
            if locked:
                await self._converge_locked(locked, result)
        finally:
            await self._states.unlock(locked, self._holder)
        return result

    async def _converge_locked(self, ids: list[str], result: ConvergeResult) -> None:
        now = self.clock()
        hosts, _ = await read_hosts(self._redis, self._keys, ids)
        liveness = await read_liveness(self._ownership, self._presence, list(hosts.values()))
        states = await self._states.get_many(ids)
        jobs: list[_Job] = []
        gone: list[str] = []
        for host_id in ids:
            job = _Job(host_id, hosts.get(host_id), states.get(host_id))
            job.zone, job.fqdn, job.wanted = wanted(
                self._settings, job.host, liveness.get(host_id), now=now
            )
            cached = None if job.state is None else job.state.records
            if job.host is None:
                if not cached:
                    gone.append(host_id)  # removed, and nothing of ours known to delete
                    continue
                job.fqdn = cached[0].name
                job.zone = self._zone_of(job.fqdn)
            if job.state is not None and job.state.deferred(now):
                result.deferred += 1  # failing: it waits out its backoff, costing nothing
                continue
            job.actual = None if cached is None else list(cached)
            jobs.append(job)
        result.hosts = len(ids)
        await self._states.forget(gone)
        result.unchanged += len(gone)

        by_zone: dict[str, list[_Job]] = defaultdict(list)
        for job in jobs:
            if job.zone is not None and job.zone in self._providers:
                by_zone[job.zone].append(job)
            else:
                self._log.warning("dns.zone_unknown", host_id=job.host_id, zone=job.zone)
        for zone, zone_jobs in by_zone.items():
            await self._converge_zone(self._providers[zone], zone_jobs, result)
        settings = self._settings
        await self._states.defer(
            sorted(set(result.failed_ids)),
            base=settings.error_backoff,
            cap=max(settings.error_backoff_cap, settings.error_backoff),
        )

    def _zone_of(self, fqdn: str) -> str | None:
        matches = [z for z in self._providers if fqdn == z or fqdn.endswith("." + z)]
        return max(matches, key=len) if matches else None

    async def _converge_zone(
        self, provider: DnsProvider, jobs: list[_Job], result: ConvergeResult
    ) -> None:
        # Fast path first: a known cache equal to what is wanted costs nothing at all.
        pending: list[_Job] = []
        settled: dict[str, list[DnsRecord]] = {}
        for job in jobs:
            if job.actual is not None and _same(job.actual, job.wanted):
                result.unchanged += 1
                if job.host is not None and (job.state is None or job.state.state != "ok"):
                    settled[job.host_id] = job.actual
                continue
            pending.append(job)
        await self._states.set_ok(settled)
        if not pending:
            return
        pending = await self._read_unknown(provider, pending, result)
        if not pending:
            return
        marker = self._settings.marker
        deletes: list[DnsRecord] = []
        upserts: list[Upsert] = []
        owners: dict[str, str] = {}
        planned: list[tuple[_Job, Plan]] = []
        for job in pending:
            changes = plan(job.wanted, job.actual or [], marker)
            if changes.conflicts:
                await self._conflict(job, changes.conflicts, result)
                continue
            planned.append((job, changes))
            if job.fqdn is not None:
                owners[job.fqdn] = job.host_id
            deletes += changes.delete
            upserts += [Upsert(r) for r in changes.create]
            upserts += [Upsert(u.desired, u.actual) for u in changes.update]
        outcome = await self._writer.apply(
            provider, deletes=deletes, upserts=upserts, owners=owners
        )
        await self._record(planned, outcome, result)

    async def _record(
        self, planned: list[tuple[_Job, Plan]], outcome: WriteOutcome, result: ConvergeResult
    ) -> None:
        """Cache what was written and mark hosts ok (failures already are on the hosts)."""
        done: dict[str, list[DnsRecord]] = {}
        removed: list[_Job] = []
        for job, changes in planned:
            keys = [r.key for r in changes.create] + [u.desired.key for u in changes.update]
            if any(k in outcome.failed for k in [*keys, *(r.key for r in changes.delete)]):
                result.failed += 1
                result.failed_ids.append(job.host_id)
                continue
            if changes.writes:
                result.written += 1
            else:
                result.unchanged += 1
            if job.host is None:
                removed.append(job)
                continue
            written = [outcome.written[k] for k in keys if k in outcome.written]
            done[job.host_id] = [*changes.unchanged, *written]
            self._log.info("dns.converged", host_id=job.host_id, records=describe(written))
        await self._states.set_ok(done)
        await self._states.forget([j.host_id for j in removed])
        await self._recheck_names([j.fqdn for j in removed])

    async def _read_unknown(
        self, provider: DnsProvider, jobs: list[_Job], result: ConvergeResult
    ) -> list[_Job]:
        """Fill ``actual`` of jobs whose cache is unknown from the provider.

        Returns the jobs that can go on: all of them, or, when the read failed, those
        whose cache was known.
        """
        unknown = [j for j in jobs if j.actual is None and j.fqdn is not None]
        if not unknown:
            return jobs
        try:
            if len(unknown) <= _PER_NAME_READS:
                for job in unknown:
                    job.actual = await self._writer.read(provider, job.fqdn, hosts=[job.host_id])
            else:
                zone = await self._writer.read(provider, hosts=[j.host_id for j in unknown])
                by_name: dict[str, list[DnsRecord]] = defaultdict(list)
                for record in zone:
                    by_name[record.name].append(record)
                for job in unknown:
                    job.actual = by_name.get(job.fqdn or "", [])
        except DnsProviderError:
            # The writer has put each failed attempt on these hosts already.
            ids = [j.host_id for j in unknown]
            result.failed += len(ids)
            result.failed_ids += ids
            return [j for j in jobs if j.actual is not None]
        return jobs

    async def _conflict(
        self, job: _Job, conflicts: Sequence[DnsRecord], result: ConvergeResult
    ) -> None:
        names = ", ".join(f"{r.name} {r.type}" for r in conflicts)
        message = f"a record not managed by this relay already holds {names}; left untouched"
        result.conflicts += 1
        result.failed_ids.append(job.host_id)
        self._metrics.conflicted(len(conflicts))
        self._log.warning("dns.conflict", host_id=job.host_id, records=names)
        await self._states.set_error([job.host_id], message, at=time.time(), forget_cache=True)

    async def _recheck_names(self, fqdns: Sequence[str | None]) -> None:
        """A removed host's name may already belong to a new host: converge that one again.

        Its cache may say its records exist while we just deleted the old host's (same
        name): drop that cache so its converge reads the provider first.
        """
        slugs = [f.split(".", 1)[0] for f in fqdns if f]
        if not slugs:
            return
        with translate_errors("look up reused slugs"):
            holders = await self._redis.mget([self._keys.slug(s) for s in slugs])
        ids = [h.decode() if isinstance(h, bytes) else str(h) for h in holders if h is not None]
        if ids:
            await self._states.invalidate(ids)
            await self._states.mark_dirty(ids)


def _same(actual: Sequence[DnsRecord], wanted: Sequence[DnsRecord]) -> bool:
    """Whether cached records already are the wanted ones (order and ids aside)."""
    if len(actual) != len(wanted):
        return False
    by_key = {r.key: r for r in actual}
    return all(w.key in by_key and by_key[w.key].matches(w) for w in wanted)
