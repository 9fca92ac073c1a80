"""Rebuild the presence projection from the event log (``relay directory rebuild``).

1. Read the whole log, page by page, and fold it: the projection as the log says it is,
   up to the last entry read (the *position*).
2. If the log still holds every entry ever appended, that fold replaces the projection.
   If the approximate MAXLEN has trimmed its head, the log can no longer vouch for what
   the trimmed entries said, so the rebuild *repairs* instead: hosts the log no longer
   mentions are kept, and for the others the stored record is joined with the fold
   (which adds what the projection missed, and never forgets what it knew).
3. The new projection is written with its position in one MULTI/EXEC, then the entries
   appended meanwhile are folded in through the normal compare-and-set path, so a rebuild
   while consumers run loses nothing (every fold is idempotent).

The report says what changed, host by host (up to :data:`MAX_CHANGES_SHOWN`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from directory.events import MAX_READ
from directory.presence import Presence, fold_all, join

if TYPE_CHECKING:
    from directory.events import EventLog
    from directory.presence import PresenceStore

__all__ = ["MAX_CHANGES_SHOWN", "HostChange", "RebuildReport", "fold_log", "rebuild_presence"]

MAX_CHANGES_SHOWN = 100


class HostChange(msgspec.Struct, frozen=True):
    """One host whose stored presence differs from the rebuilt one (None: no record)."""

    host_id: str
    before: Presence | None
    after: Presence | None


class RebuildReport(msgspec.Struct, frozen=True):
    """What a rebuild found and did.

    ``complete`` is False when the log's head was trimmed (the rebuild then repairs rather
    than replaces). ``caught_up`` counts entries appended during the rebuild and folded
    in after it. ``added``/``removed``/``changed`` count host records.
    """

    dry_run: bool
    complete: bool
    position: str | None
    events: int
    hosts: int
    unchanged: int
    added: int
    removed: int
    changed: int
    caught_up: int
    changes: list[HostChange]


async def fold_log(log: EventLog) -> tuple[dict[str, Presence], str | None, int]:
    """Fold the whole log: (presence by host, last entry id read, events folded)."""
    states: dict[str, Presence] = {}
    after: str | None = None
    count = 0
    while True:
        page = await log.read_page(after, MAX_READ)
        if page.last_id is None:
            return states, after, count
        states = fold_all((event for _, event in page.events), states)
        count += len(page.events)
        after = page.last_id


async def rebuild_presence(
    log: EventLog, store: PresenceStore, *, dry_run: bool = False
) -> RebuildReport:
    """Rebuild the stored presence from ``log`` (see the module docstring)."""
    info = await log.info()
    before = await store.all()
    rebuilt, position, events = await fold_log(log)
    if not info.complete:
        for host_id, stored in before.items():
            found = rebuilt.get(host_id)
            rebuilt[host_id] = stored if found is None else join(stored, found)
    changes, (added, removed, changed) = _diff(before, rebuilt)
    caught_up = 0
    if not dry_run:
        await store.replace(rebuilt, position)
        position, caught_up = await _catch_up(log, store, position)
    return RebuildReport(
        dry_run=dry_run,
        complete=info.complete,
        position=position,
        events=events,
        hosts=len(rebuilt),
        unchanged=len(rebuilt) - added - changed,
        added=added,
        removed=removed,
        changed=changed,
        caught_up=caught_up,
        changes=changes,
    )


def _diff(
    before: dict[str, Presence], after: dict[str, Presence]
) -> tuple[list[HostChange], tuple[int, int, int]]:
    """The changes to show, and the counts (added, removed, changed)."""
    changes: list[HostChange] = []
    added = removed = changed = 0
    for host_id in sorted(before.keys() | after.keys()):
        old, new = before.get(host_id), after.get(host_id)
        if old == new:
            continue
        if old is None:
            added += 1
        elif new is None:
            removed += 1
        else:
            changed += 1
        if len(changes) < MAX_CHANGES_SHOWN:
            changes.append(HostChange(host_id, old, new))
    return changes, (added, removed, changed)


async def _catch_up(
    log: EventLog, store: PresenceStore, position: str | None
) -> tuple[str | None, int]:
    """Fold in what was appended after ``position``; returns the new position and count."""
    count = 0
    while True:
        page = await log.read_page(position, MAX_READ)
        if page.last_id is None:
            return position, count
        await store.apply(page.events)
        count += len(page.events)
        position = page.last_id
