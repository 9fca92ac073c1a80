"""Counters the directory keeps for its host process to export.

``directory`` never imports ``relay``, so it cannot reach the relay's OpenTelemetry meter.
Instead its components count into a :class:`Stats` (plain integers, a few dozen
nanoseconds per increment) and the relay reads them at scrape time through observable
instruments (:func:`relay.machine.events.register_event_metrics`). Names are the exported metric
names; labels are keyword arguments::

    stats.incr("relay_events_dead_lettered_total", group="presence")

Each component takes a ``stats`` argument defaulting to the process-wide :data:`STATS`,
so a test can hand it a fresh instance and assert exact counts.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["METRIC_DESCRIPTIONS", "STATS", "Stats"]

_Labels = tuple[tuple[str, str], ...]

# Every counter the directory (and the relay's event plumbing) keeps: name -> help text.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "relay_events_appended_total": "Events appended to the event log",
    "relay_events_unknown_skipped_total": "Log entries of kinds this version does not know",
    "relay_events_corrupt_skipped_total": "Log entries of a known kind that did not decode",
    "relay_events_applied_total": "Log entries a consumer group handled and acknowledged",
    "relay_events_handler_errors_total": "Handler failures (entry left pending for a retry)",
    "relay_events_reclaimed_total": "Entries reclaimed from a stuck or dead consumer, by group",
    "relay_events_dead_lettered_total": "Poison entries parked in the dead-letter stream",
    "relay_events_trimmed_pending_total": "Pending entries trimmed from the log unhandled",
    "relay_events_consumer_errors_total": "Consumer loop failures, by group and op",
    "relay_presence_write_conflicts_total": "Presence writes retried because another writer raced",
    "relay_presence_corrupt_total": "Stored presence records that did not decode (rebuild fixes)",
    "relay_presence_reconcile_total": "Presence reconciler passes, by result",
    "relay_presence_owner_expired_total": "Hosts the reconciler found online without an owner key",
    "relay_events_emitted_total": "Events handed to this relay's outbox",
    "relay_events_dropped_total": "Events dropped from this relay's outbox (overflow or shutdown)",
    "relay_events_flush_errors_total": "Failed attempts to flush this relay's event outbox",
}


class Stats:
    """Monotonic counters keyed by name and labels."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, _Labels]] = Counter()

    def incr(self, name: str, n: int = 1, **labels: str) -> None:
        """Add ``n`` to the counter ``name`` with these labels."""
        self._counts[name, tuple(sorted(labels.items())) if labels else ()] += n

    def get(self, name: str, **labels: str) -> int:
        """The sum of every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(
            n for (key, series), n in self._counts.items() if key == name and want <= set(series)
        )

    def series(self, name: str) -> list[tuple[dict[str, str], int]]:
        """Every (labels, value) of the counter ``name``."""
        return [(dict(series), n) for (key, series), n in self._counts.items() if key == name]


STATS = Stats()
