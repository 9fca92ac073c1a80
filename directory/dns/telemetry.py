"""Metrics of the DNS work, on a meter the process hands in (the relay's, for /metrics).

::

    relay_dns_write_total{op, status}              records written: op create|update|delete,
                                                   status ok|error (one per record per attempt)
    relay_dns_write_errors_total{op, http_status}  failed write attempts; http_status is the
                                                   provider's status, "none" when no answer came
    relay_dns_list_total{status}                   zone listings (reads), ok|error
    relay_dns_list_errors_total{http_status}       failed listings
    relay_dns_conflicts_total                      wanted records blocked by a record not ours
    relay_dns_sync_total{outcome, dry_run}         full syncs: ok|partial|failed

Every (op, status) series of ``relay_dns_write_total`` is exported from the start, at zero,
so an alert on its error rate has a series to read before the first failure.

The same counts are kept as plain tallies on the object, so tests and the benchmark read
them without scraping.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import TYPE_CHECKING

from opentelemetry.metrics import NoOpMeter

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

__all__ = ["DnsMetrics"]


_WRITE_OPS = ("create", "update", "delete")


def _status_label(status: int | None) -> str:
    return "none" if status is None else str(status)


class DnsMetrics:
    """Counters of DNS writes, reads, conflicts and syncs."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or NoOpMeter("dns")
        self._writes = meter.create_counter(
            "relay_dns_write_total", description="DNS records written, by operation and outcome"
        )
        self._write_errors = meter.create_counter(
            "relay_dns_write_errors_total",
            description="Failed DNS write attempts, by operation and the provider's HTTP status",
        )
        self._lists = meter.create_counter(
            "relay_dns_list_total", description="DNS zone listings, by outcome"
        )
        self._list_errors = meter.create_counter(
            "relay_dns_list_errors_total", description="Failed DNS zone listings, by HTTP status"
        )
        self._conflicts = meter.create_counter(
            "relay_dns_conflicts_total", description="Wanted records blocked by a record not ours"
        )
        self._syncs = meter.create_counter(
            "relay_dns_sync_total", description="Full DNS syncs, by outcome"
        )
        for op in _WRITE_OPS:
            for status in ("ok", "error"):
                self._writes.add(0, {"op": op, "status": status})
        self.writes: Tally[tuple[str, str]] = Tally()
        self.write_errors: Tally[tuple[str, str]] = Tally()
        self.lists: Tally[str] = Tally()
        self.conflicts = 0

    def wrote(self, op: str, count: int = 1) -> None:
        """``count`` records written by ``op``."""
        self.writes[(op, "ok")] += count
        self._writes.add(count, {"op": op, "status": "ok"})

    def write_failed(self, op: str, status: int | None, count: int = 1) -> None:
        """A write attempt of ``count`` records by ``op`` failed with ``status``."""
        label = _status_label(status)
        self.writes[(op, "error")] += count
        self.write_errors[(op, label)] += count
        self._writes.add(count, {"op": op, "status": "error"})
        self._write_errors.add(count, {"op": op, "http_status": label})

    def listed(self, status: int | None = None, *, ok: bool = True) -> None:
        """One zone listing ended."""
        outcome = "ok" if ok else "error"
        self.lists[outcome] += 1
        self._lists.add(1, {"status": outcome})
        if not ok:
            self._list_errors.add(1, {"http_status": _status_label(status)})

    def conflicted(self, count: int = 1) -> None:
        """``count`` wanted records were blocked by records not ours."""
        self.conflicts += count
        self._conflicts.add(count)

    def synced(self, outcome: str, *, dry_run: bool) -> None:
        """A full sync ended with ``outcome``."""
        self._syncs.add(1, {"outcome": outcome, "dry_run": str(dry_run).lower()})

    @property
    def write_count(self) -> int:
        """Records written successfully so far (all ops)."""
        return sum(n for (_, status), n in self.writes.items() if status == "ok")
