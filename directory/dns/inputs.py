"""What the DNS work reads to decide what a host should have: the projections.

* the host registry (slug, test flag, creation time),
* live ownership (an owner key means a tunnel holds the host right now),
* presence (the event-sourced projection: online, last disconnect).

A host is online when either says so (ownership is the live truth, presence may lag a
moment behind). It is offline since its last disconnect, or since it was created if it
never connected. :func:`wanted` turns that into records with the pure rules of
:mod:`directory.dns.records`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import msgspec
import structlog

from directory.dns.records import DnsRecord, desired_records, keeps_records
from directory.errors import CorruptRecord
from directory.models import HostRecord, decode
from directory.store import mget, translate_errors

if TYPE_CHECKING:
    from collections.abc import Sequence

    from directory.dns.settings import DnsSettings
    from directory.keys import Keys
    from directory.ownership import OwnershipStore
    from directory.presence import PresenceStore
    from directory.store import StoreClient

__all__ = ["HostInput", "Liveness", "read_hosts", "read_liveness", "wanted"]

_log = structlog.get_logger("directory.dns")
_MGET_BATCH = 1000


class Liveness(msgspec.Struct, frozen=True):
    """Whether a host is online, and since when it is offline (None: unknown/online)."""

    online: bool
    offline_since: float | None


class HostInput(msgspec.Struct, frozen=True):
    """A host as the DNS work needs it."""

    id: str
    slug: str
    test: bool
    created_at: float


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_hosts(
    redis: StoreClient, keys: Keys, host_ids: Sequence[str] | None = None
) -> tuple[dict[str, HostInput], bool]:
    """The hosts with these ids (every registered host when None), and whether all read.

    A record that does not decode is skipped and makes the result incomplete, so a sync
    knows it must not delete anything on the strength of this reading.
    """
    complete = True
    with translate_errors("read hosts for DNS"):
        if host_ids is None:
            raw_ids = cast("list[bytes]", await redis.zrange(keys.hosts_index(), 0, -1))
            host_ids = [_text(i) for i in raw_ids]
        found: dict[str, HostInput] = {}
        for start in range(0, len(host_ids), _MGET_BATCH):
            chunk = host_ids[start : start + _MGET_BATCH]
            raws = await mget(redis, [keys.host(h) for h in chunk])
            for host_id, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    continue
                try:
                    record = decode(HostRecord, raw, where=keys.host(host_id))
                except CorruptRecord as exc:
                    complete = False
                    _log.warning("dns.host_unreadable", host_id=host_id, error=str(exc))
                    continue
                found[host_id] = HostInput(record.id, record.slug, record.test, record.created_at)
    return found, complete


async def read_liveness(
    ownership: OwnershipStore,
    presence: PresenceStore | None,
    hosts: Sequence[HostInput],
) -> dict[str, Liveness]:
    """Online/offline-since of each host, from ownership and presence."""
    ids = [h.id for h in hosts]
    owners = await ownership.owners(ids)
    presences = await presence.get_many(ids) if presence is not None and ids else {}
    result: dict[str, Liveness] = {}
    for host in hosts:
        seen = presences.get(host.id)
        online = owners.get(host.id) is not None or (seen is not None and seen.online)
        since: float | None = None
        if not online:
            since = host.created_at
            if seen is not None:
                since = seen.last_disconnected_at or seen.last_connected_at or host.created_at
        result[host.id] = Liveness(online, since)
    return result


def wanted(
    settings: DnsSettings, host: HostInput | None, liveness: Liveness | None, *, now: float
) -> tuple[str | None, str | None, list[DnsRecord]]:
    """``(zone, fqdn, records)`` a host should have; no zone/fqdn for a removed host."""
    if host is None:
        return None, None, []
    zone, fqdn = settings.placement(host.slug, test=host.test)
    live = liveness or Liveness(online=False, offline_since=host.created_at)
    keep = keeps_records(
        exists=True,
        online=live.online,
        offline_since=live.offline_since,
        now=now,
        grace=settings.offline_grace,
    )
    if not keep:
        return zone, fqdn, []
    records = desired_records(
        fqdn, settings.targets, ttl=settings.ttl, marker=settings.marker, proxied=settings.proxied
    )
    return zone, fqdn, records
