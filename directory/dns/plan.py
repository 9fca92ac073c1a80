"""Desired versus actual: the changes that make a zone right. Pure: no I/O.

:func:`plan` compares the records we want with the records a zone has and decides, per
``(name, type)``:

* **create** what is wanted and missing;
* **update** what is ours but has drifted (content, TTL, proxied);
* **delete** orphans: records that carry our marker but are not wanted (their *name*,
  exactly as the record carries it, is the key; never an internal id), and duplicates of
  ours at a wanted key;
* leave **unchanged** what already matches;
* report a **conflict** where a record we do not own holds a wanted name (another CNAME,
  a record of the same type, or anything at all when we want a CNAME) and write nothing
  there: we never touch records that are not ours;
* **spare** orphans it may not delete: all of them when deletes are not allowed (the
  wanted set could not be read), those changed within ``grace`` seconds (another machine
  may have just created them for a host this reader did not see yet), and those beyond
  ``max_deletes`` in one pass.

Applying a plan with :func:`apply_plan` (what providers do, simulated) yields the wanted
records minus conflicts, plus untouched foreign records and spared orphans. Providers
apply deletes first, then updates and creates, so a type change (CNAME to A) frees the
name before the new record needs it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import msgspec

from directory.dns.records import MANAGED_TYPES, DnsRecord, RecordKey

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Plan", "Update", "apply_plan", "plan"]


class Update(msgspec.Struct, frozen=True):
    """An existing record of ours (``actual``, with its provider id) to become ``desired``."""

    actual: DnsRecord
    desired: DnsRecord


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """The changes one pass makes, and what it left alone and why."""

    create: tuple[DnsRecord, ...] = ()
    update: tuple[Update, ...] = ()
    delete: tuple[DnsRecord, ...] = ()
    unchanged: tuple[DnsRecord, ...] = ()
    conflicts: tuple[DnsRecord, ...] = ()
    spared: tuple[DnsRecord, ...] = ()

    @property
    def writes(self) -> int:
        """How many records the plan changes."""
        return len(self.create) + len(self.update) + len(self.delete)


def _conflicts(wanted: DnsRecord, foreign: Iterable[DnsRecord]) -> bool:
    """Whether a record we do not own at the wanted name blocks it (DNS coexistence rules)."""
    return any(wanted.type == "CNAME" or other.type in {"CNAME", wanted.type} for other in foreign)


def plan(
    desired: Iterable[DnsRecord],
    actual: Iterable[DnsRecord],
    marker: str,
    *,
    now: float = 0.0,
    grace: float = 0.0,
    max_deletes: int | None = None,
    allow_deletes: bool = True,
) -> Plan:
    """The changes that turn ``actual`` into ``desired`` without touching others' records.

    ``desired`` records carry ``marker``; ``actual`` is what the zone (or the part of it
    being converged) holds, in any order, duplicates included.
    """
    wanted: dict[RecordKey, DnsRecord] = {}
    for record in desired:
        wanted.setdefault(record.key, record)
    ours: dict[RecordKey, list[DnsRecord]] = defaultdict(list)
    foreign_at: dict[str, list[DnsRecord]] = defaultdict(list)
    for record in actual:
        if record.is_ours(marker):
            ours[record.key].append(record)
        else:
            foreign_at[record.name].append(record)

    create: list[DnsRecord] = []
    update: list[Update] = []
    unchanged: list[DnsRecord] = []
    conflicts: list[DnsRecord] = []
    doomed: list[DnsRecord] = []
    for key in sorted(wanted):
        record = wanted[key]
        existing = sorted(ours.get(key, ()), key=_stable)
        if existing:
            # Several of ours at one key (a create retried after a lost answer): keep the
            # one to update or leave, delete the rest.
            keep = next((r for r in existing if r.matches(record)), existing[0])
            doomed += [r for r in existing if r is not keep]
            if keep.matches(record):
                unchanged.append(keep)
            else:
                update.append(Update(keep, record))
        elif _conflicts(record, foreign_at.get(record.name, ())):
            conflicts.append(record)
        else:
            create.append(record)
    for key in sorted(ours):
        if key not in wanted and key[1] in MANAGED_TYPES:
            doomed += sorted(ours[key], key=_stable)
    delete, spared = _limit_deletes(
        doomed, now=now, grace=grace, max_deletes=max_deletes, allow=allow_deletes
    )
    return Plan(
        create=tuple(create),
        update=tuple(update),
        delete=tuple(delete),
        unchanged=tuple(unchanged),
        conflicts=tuple(conflicts),
        spared=tuple(spared),
    )


def _limit_deletes(
    doomed: Iterable[DnsRecord],
    *,
    now: float,
    grace: float,
    max_deletes: int | None,
    allow: bool,
) -> tuple[list[DnsRecord], list[DnsRecord]]:
    """Split records to delete into those deleted now and those spared (and why not)."""
    delete: list[DnsRecord] = []
    spared: list[DnsRecord] = []
    for record in doomed:
        young = grace > 0 and record.modified_at is not None and now - record.modified_at < grace
        capped = max_deletes is not None and len(delete) >= max_deletes
        if not allow or young or capped:
            spared.append(record)
        else:
            delete.append(record)
    return delete, spared


def _stable(record: DnsRecord) -> tuple[str, str, str]:
    return (record.content, record.id or "", record.comment or "")


def apply_plan(actual: Iterable[DnsRecord], changes: Plan) -> list[DnsRecord]:
    """The records a zone holds after ``changes`` were applied to ``actual`` (a simulation).

    Records are matched by identity of their fields, so this is exact for the tests and the
    in-memory provider; real providers do the same through their APIs.
    """
    remaining = list(actual)
    for record in changes.delete:
        remaining.remove(record)
    for change in changes.update:
        remaining[remaining.index(change.actual)] = change.desired
    remaining.extend(changes.create)
    return remaining
