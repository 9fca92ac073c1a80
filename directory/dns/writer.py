"""Every DNS API call goes through here: rate limit, retries, and failures never silent.

For each call (one provider request):

1. take a token from the shared rate limit;
2. on success count the records written (``relay_dns_write_total{op,status="ok"}``) and append
   a ``DnsWriteSucceeded`` event per record;
3. on failure, *at once*: count it (``relay_dns_write_total{status="error"}`` and
   ``relay_dns_write_errors_total{op,http_status}``), log one structured ``dns.write_failed``
   line, put ``state=error``, ``last_error`` and ``last_error_at`` on every host the call
   concerned (so the API shows it within a second), append a ``DnsWriteFailed`` event;
   then retry if the error is retryable: after ``Retry-After`` for a 429 (which also
   pauses every machine), else after an exponential backoff with full jitter;
4. a batch refused as a whole (a 4xx other than auth) is retried record by record, so
   one bad record cannot block the others.

Writes are chunked to the provider's ``max_batch``; deletes go first, so a name whose
type changes is free before its new record is created.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

import msgspec

from directory.errors import DirectoryError, DnsProviderError, DnsRateLimited, DnsRejected
from directory.events import DnsWriteFailed, DnsWriteSucceeded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from structlog.typing import FilteringBoundLogger

    from directory.dns.provider import DnsProvider, Upsert
    from directory.dns.ratelimit import RateLimiter
    from directory.dns.records import DnsRecord
    from directory.dns.settings import DnsSettings
    from directory.dns.state import DnsStateStore
    from directory.dns.telemetry import DnsMetrics
    from directory.events import AnyEvent

__all__ = ["DnsWriter", "WriteOutcome"]

# A 429 without Retry-After still waits at least this long.
_MIN_RATE_WAIT = 1.0


class WriteOutcome(msgspec.Struct):
    """What a set of writes did: records written (by key), deleted, and failed (by key)."""

    written: dict[tuple[str, str], DnsRecord] = msgspec.field(default_factory=dict)
    deleted: list[DnsRecord] = msgspec.field(default_factory=list)
    failed: dict[tuple[str, str], DnsProviderError] = msgspec.field(default_factory=dict)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


class DnsWriter:
    """Makes provider calls with the shared limit, retries, metrics, logs, status, events."""

    def __init__(
        self,
        *,
        settings: DnsSettings,
        states: DnsStateStore,
        metrics: DnsMetrics,
        limiter: RateLimiter,
        log: FilteringBoundLogger,
        emit: Callable[[AnyEvent], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._states = states
        self._metrics = metrics
        self._limiter = limiter
        self._log = log
        self._emit = emit
        self._sleep = sleep

    async def read(
        self,
        provider: DnsProvider,
        name: str | None = None,
        *,
        hosts: Sequence[str] = (),
    ) -> list[DnsRecord]:
        """List the zone (or one name), with retries; the last error is raised.

        ``hosts`` are those waiting on this read: each failed attempt shows on them at once.
        """
        attempt = 0
        while True:
            await self._limiter.acquire()
            try:
                records = await provider.list(name)
            except DnsProviderError as exc:
                self._metrics.listed(exc.status, ok=False)
                self._log.warning(
                    "dns.list_failed",
                    provider=provider.name,
                    zone=provider.zone,
                    name=name,
                    attempt=attempt + 1,
                    http_status=exc.status,
                    provider_code=exc.provider_code,
                    retryable=exc.retryable,
                    error=str(exc),
                )
                await self._show_error(hosts, f"reading the current records failed: {exc}")
                attempt += 1
                if not exc.retryable or attempt >= self._settings.attempts:
                    raise
                await self._wait(exc, attempt)
                continue
            self._metrics.listed()
            return records

    async def apply(
        self,
        provider: DnsProvider,
        *,
        deletes: Sequence[DnsRecord] = (),
        upserts: Sequence[Upsert] = (),
        owners: Mapping[str, str] | None = None,
    ) -> WriteOutcome:
        """Delete, then create/update, in chunks; failures are recorded, never raised.

        ``owners`` maps a record name to the host it belongs to, for host status and
        events; orphans have no host.
        """
        outcome = WriteOutcome()
        owners = owners or {}
        for chunk in _chunks(deletes, provider.max_batch):
            await self._run(provider, "delete", list(chunk), owners, outcome)
        for chunk in _chunks(upserts, provider.max_batch):
            await self._run(provider, "upsert", list(chunk), owners, outcome)
        return outcome

    async def _run(
        self,
        provider: DnsProvider,
        kind: str,
        items: list[Any],
        owners: Mapping[str, str],
        outcome: WriteOutcome,
    ) -> None:
        records: list[DnsRecord] = [i.record for i in items] if kind == "upsert" else items
        ops = [i.op for i in items] if kind == "upsert" else ["delete"] * len(items)
        attempt = 0
        while True:
            await self._limiter.acquire()
            try:
                if kind == "upsert":
                    written = await provider.ensure(items)
                else:
                    await provider.delete(items)
                    written = []
            except DnsProviderError as exc:
                attempt += 1
                await self._failed(provider, exc, records, ops, owners, attempt)
                if exc.retryable and attempt < self._settings.attempts:
                    await self._wait(exc, attempt)
                    continue
                if isinstance(exc, DnsRejected) and len(items) > 1:
                    # One refused record must not block the rest: try each on its own.
                    for item in items:
                        await self._run(provider, kind, [item], owners, outcome)
                    return
                for record in records:
                    outcome.failed[record.key] = exc
                return
            self._succeeded(records, ops, owners)
            if kind == "upsert":
                by_key = {r.key: r for r in written}
                for record in records:
                    outcome.written[record.key] = by_key.get(record.key, record)
            else:
                outcome.deleted += records
            return

    def _succeeded(
        self, records: Sequence[DnsRecord], ops: Sequence[str], owners: Mapping[str, str]
    ) -> None:
        for op in set(ops):
            self._metrics.wrote(op, ops.count(op))
        if self._emit is not None:
            for record, op in zip(records, ops, strict=True):
                self._emit(
                    DnsWriteSucceeded(host_id=owners.get(record.name, ""), fqdn=record.name, op=op)
                )

    async def _failed(
        self,
        provider: DnsProvider,
        exc: DnsProviderError,
        records: Sequence[DnsRecord],
        ops: Sequence[str],
        owners: Mapping[str, str],
        attempt: int,
    ) -> None:
        for op in set(ops):
            self._metrics.write_failed(op, exc.status, ops.count(op))
        names = sorted({r.name for r in records})
        self._log.warning(
            "dns.write_failed",
            provider=provider.name,
            zone=provider.zone,
            ops=sorted(set(ops)),
            names=names[:20],
            records=len(records),
            attempt=attempt,
            http_status=exc.status,
            provider_code=exc.provider_code,
            retryable=exc.retryable,
            retry_after=exc.retry_after,
            error=str(exc),
        )
        hosts = sorted({owners[n] for n in names if owners.get(n)})
        # After a failed create/update we no longer know what the provider holds: the next
        # converge reads it. A failed delete leaves the records we know of to delete again.
        await self._show_error(hosts, str(exc), forget_cache="delete" not in ops)
        if self._emit is not None:
            for record, op in zip(records, ops, strict=True):
                self._emit(
                    DnsWriteFailed(
                        host_id=owners.get(record.name, ""),
                        fqdn=record.name,
                        op=op,
                        error=str(exc)[:500],
                        http_status=exc.status,
                    )
                )

    async def _show_error(
        self, hosts: Sequence[str], message: str, *, forget_cache: bool = False
    ) -> None:
        """Put the failure on the hosts' status now (the API shows it within a second)."""
        try:
            await self._states.set_error(hosts, message, at=time.time(), forget_cache=forget_cache)
        except DirectoryError as store_exc:
            # The DNS failure is already counted and logged; say the status could not be kept.
            self._log.warning("dns.status_write_failed", hosts=len(hosts), error=str(store_exc))

    async def _wait(self, exc: DnsProviderError, attempt: int) -> None:
        settings = self._settings
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            # Full jitter: a random point in an exponentially growing window.
            window = min(settings.backoff_cap, settings.backoff_base * 2 ** (attempt - 1))
            delay = random.uniform(0, window)  # noqa: S311 - jitter, not a secret
        if isinstance(exc, DnsRateLimited):
            delay = max(delay, _MIN_RATE_WAIT)
            try:
                await self._limiter.pause(delay)
            except DirectoryError as store_exc:
                self._log.warning("dns.rate_pause_failed", error=str(store_exc))
        await self._sleep(delay)
