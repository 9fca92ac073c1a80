"""Full sync: compare every zone with what all hosts should have, and fix the difference.

Per zone: list everything the provider holds, :func:`~directory.dns.plan.plan` against the
wanted records of every host, then delete orphans, update drift, create what is missing,
and refresh each host's cache and status. Safety rules:

* only records carrying our marker are ever updated or deleted; a record someone else
  owns at a wanted name is a conflict, reported and left alone;
* orphans are found by the exact name the record carries, never by an internal id;
* **no deletes at all** when the wanted set could not be read completely (a host record
  that does not decode), or when the zone could not be listed (then nothing is done in
  that zone: without its contents we cannot know what is missing either);
* orphans changed within ``orphan_grace`` are spared, and at most ``max_deletes`` are
  deleted per pass;
* a dry run plans and reports, and changes nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

import msgspec

from directory.dns.inputs import read_hosts, read_liveness, wanted
from directory.dns.plan import Plan, plan
from directory.dns.provider import Upsert
from directory.errors import DirectoryError, DnsProviderError

if TYPE_CHECKING:
    from directory.dns.context import DnsContext
    from directory.dns.provider import DnsProvider
    from directory.dns.records import DnsRecord
    from directory.dns.writer import WriteOutcome

__all__ = ["SyncReport", "Syncer"]

_MAX_DETAILS = 200


class SyncReport(msgspec.Struct, kw_only=True):
    """What a sync did (or, in a dry run, would do). ``changes`` lists the first few."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    already_synced: int = 0
    skipped: int = 0
    errors: int = 0
    dry_run: bool = False
    changes: list[str] = msgspec.field(default_factory=list)

    def note(self, line: str) -> None:
        """Add a line to ``changes`` (bounded, so a huge sync stays a small answer)."""
        if len(self.changes) < _MAX_DETAILS:
            self.changes.append(line)


def _line(verb: str, record: DnsRecord) -> str:
    return f"{verb} {record.name} {record.type} {record.content}"


class Syncer:
    """Runs full syncs over every zone."""

    def __init__(self, ctx: DnsContext, *, holder: str) -> None:
        self._holder = f"sync:{holder}"
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

    async def sync(self, *, dry_run: bool = False) -> SyncReport:
        """One full pass over every zone."""
        report = SyncReport(dry_run=dry_run)
        now = time.time()
        try:
            hosts, complete = await read_hosts(self._redis, self._keys)
            liveness = await read_liveness(self._ownership, self._presence, list(hosts.values()))
        except DirectoryError as exc:
            report.errors += 1
            self._log.warning("dns.sync_failed", stage="read_hosts", error=str(exc))
            self._metrics.synced("failed", dry_run=dry_run)
            return report
        if not complete:
            report.errors += 1
            self._log.warning("dns.sync_deletes_skipped", reason="host registry not fully readable")
        desired: dict[str, list[DnsRecord]] = defaultdict(list)
        owners: dict[str, dict[str, str]] = defaultdict(dict)
        for host in hosts.values():
            zone, fqdn, records = wanted(self._settings, host, liveness.get(host.id), now=now)
            if zone is None or fqdn is None:
                continue
            owners[zone][fqdn] = host.id
            desired[zone] += records
        budget = self._settings.max_deletes
        clean = complete
        for zone, provider in self._providers.items():
            deleted, zone_clean = await self._sync_zone(
                provider, desired.get(zone, []), owners[zone], report,
                now=now, allow_deletes=complete, budget=budget,
            )  # fmt: skip
            budget -= deleted
            clean = clean and zone_clean
        if clean and not dry_run:
            await self._forget_removed(set(hosts))
        outcome = "ok" if report.errors == 0 else "partial"
        self._metrics.synced(outcome, dry_run=dry_run)
        self._log.info(
            "dns.synced",
            dry_run=dry_run,
            created=report.created,
            updated=report.updated,
            deleted=report.deleted,
            already_synced=report.already_synced,
            skipped=report.skipped,
            errors=report.errors,
        )
        return report

    async def _sync_zone(
        self,
        provider: DnsProvider,
        desired: list[DnsRecord],
        owners: dict[str, str],
        report: SyncReport,
        *,
        now: float,
        allow_deletes: bool,
        budget: int,
    ) -> tuple[int, bool]:
        """Sync one zone; returns the records it deleted (or would) and whether it is clean.

        Clean: no orphan of ours is left in the zone (none spared, no write failed).
        """
        try:
            actual = await self._writer.read(provider)
        except DnsProviderError as exc:
            report.errors += 1
            report.skipped += len(desired)
            report.note(f"skip zone {provider.zone}: listing failed, no changes: {exc}")
            self._log.warning(
                "dns.sync_zone_skipped", zone=provider.zone, error=str(exc), http_status=exc.status
            )
            return 0, False
        changes = plan(
            desired,
            actual,
            self._settings.marker,
            now=now,
            grace=self._settings.orphan_grace,
            max_deletes=max(budget, 0),
            allow_deletes=allow_deletes,
        )
        report.already_synced += len(changes.unchanged)
        report.skipped += len(changes.conflicts) + len(changes.spared)
        for record in changes.conflicts:
            report.note(_line("conflict (not ours, left alone)", record))
        for record in changes.spared:
            report.note(_line("spare", record))
        if changes.conflicts:
            self._metrics.conflicted(len(changes.conflicts))
        if report.dry_run:
            report.created += len(changes.create)
            report.updated += len(changes.update)
            report.deleted += len(changes.delete)
            for verb, records in (
                ("create", changes.create),
                ("update", [u.desired for u in changes.update]),
                ("delete", changes.delete),
            ):
                for record in records:
                    report.note(_line(f"would {verb}", record))
            return len(changes.delete), False
        deleted, failed = await self._apply(provider, changes, owners, report)
        return deleted, not changes.spared and not failed

    async def _apply(
        self, provider: DnsProvider, changes: Plan, owners: dict[str, str], report: SyncReport
    ) -> tuple[int, bool]:
        upserts = [Upsert(r) for r in changes.create]
        upserts += [Upsert(u.desired, u.actual) for u in changes.update]
        # Hold the hosts we write, as the worker does: a host the worker is converging
        # right now (retrying, perhaps) is left to it rather than written twice.
        touched = sorted({owners[u.record.name] for u in upserts if u.record.name in owners})
        ttl_ms = int(self._settings.lock_ttl * 1000)
        locked = await self._states.lock(touched, self._holder, ttl_ms)
        busy = set(touched) - set(locked)
        for upsert in [u for u in upserts if owners.get(u.record.name) in busy]:
            report.skipped += 1
            report.note(_line("skip (being converged)", upsert.record))
            upserts.remove(upsert)
        try:
            outcome = await self._writer.apply(
                provider, deletes=changes.delete, upserts=upserts, owners=owners
            )
        finally:
            await self._states.unlock(locked, self._holder)
        report.deleted += len(outcome.deleted)
        report.errors += len(outcome.failed)
        for record in outcome.deleted:
            report.note(_line("deleted", record))
        for upsert in upserts:
            key = upsert.record.key
            if key in outcome.written:
                report.created += upsert.existing is None
                report.updated += upsert.existing is not None
                verb = "created" if upsert.existing is None else "updated"
                report.note(_line(verb, upsert.record))
        await self._refresh_states(provider, changes, outcome, owners, busy)
        return len(outcome.deleted), bool(outcome.failed)

    async def _refresh_states(
        self,
        provider: DnsProvider,
        changes: Plan,
        outcome: WriteOutcome,
        owners: dict[str, str],
        busy: set[str],
    ) -> None:
        """Refresh every host's cache and status to what the zone now holds for it."""
        final: dict[str, list[DnsRecord]] = defaultdict(list)
        failed_hosts: set[str] = set()
        for record in changes.unchanged:
            final[record.name].append(record)
        for key, record in outcome.written.items():
            final[key[0]].append(record)
        for key in outcome.failed:
            if key[0] in owners:
                failed_hosts.add(owners[key[0]])
        conflicted = sorted({owners[r.name] for r in changes.conflicts if r.name in owners})
        done = {
            host_id: final.get(fqdn, [])
            for fqdn, host_id in owners.items()
            if host_id not in failed_hosts and host_id not in conflicted and host_id not in busy
        }
        try:
            await self._states.set_ok(done)
            if conflicted:
                await self._states.set_error(
                    conflicted,
                    "a record not managed by this relay holds the host's name; left untouched",
                    at=time.time(),
                    forget_cache=True,
                )
        except DirectoryError as exc:
            self._log.warning("dns.sync_status_failed", zone=provider.zone, error=str(exc))

    async def _forget_removed(self, registered: set[str]) -> None:
        """Drop the DNS state of removed hosts once no record of ours is left anywhere."""
        try:
            stale = [h for h in await self._states.tracked() if h not in registered]
            # A host created since the registry was read is not stale: check again.
            created_since, _ = await read_hosts(self._redis, self._keys, stale)
            await self._states.forget([h for h in stale if h not in created_since])
        except DirectoryError as exc:
            self._log.warning("dns.sync_forget_failed", error=str(exc))
