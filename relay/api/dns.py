"""DNS routes of the admin API, and each host's ``dns`` status for the host views.

* ``GET /api/dns/records`` → every record of the managed zones, ``ours`` marking ours;
* ``POST /api/dns/sync[?dry_run=1]`` → ``{created, updated, deleted, already_synced,
  skipped, errors, dry_run, changes}``;
* ``DELETE /api/dns/records/{fqdn}`` → 200 with what was deleted; 404 when no record has
  that name, 409 when the records there are not ours or a host still wants them.

In wildcard mode these answer 409 ``dns_disabled``. Errors are the directory's (the app's
middleware maps them), so a provider failure is a 502 with its message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from directory.dns.records import describe
from directory.errors import DnsDisabled
from relay.api.query import flag
from relay.machine.state import STATE
from relay.proxy.responses import json_error, json_response

if TYPE_CHECKING:
    from aiohttp import web

    from relay.machine.state import RelayState

__all__ = ["DnsStatus", "add_dns_routes", "dns_statuses"]


class DnsStatus(msgspec.Struct, frozen=True):
    """DNS state of a host: ``ok``, ``pending``, ``error`` or ``disabled`` (wildcard mode)."""

    state: str = "disabled"
    records: list[str] = msgspec.field(default_factory=list)
    last_error: str | None = None
    last_error_at: str | None = None


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def dns_statuses(state: RelayState, host_ids: list[str]) -> dict[str, DnsStatus]:
    """The ``dns`` field of each host's view (one store round trip for all of them)."""
    service = state.dns
    if service is None:
        return {h: DnsStatus() for h in host_ids}
    statuses = await service.statuses(host_ids)
    return {
        host_id: DnsStatus(s.state, s.records, s.last_error, _rfc3339(s.last_error_at))
        for host_id, s in statuses.items()
    }


async def list_records(request: web.Request) -> web.Response:
    """``GET /api/dns/records``."""
    state = request.app[STATE]
    if state.dns is None:
        raise DnsDisabled("DNS management is not running on this relay")
    return json_response({"records": await state.dns.records()})


async def sync(request: web.Request) -> web.Response:
    """``POST /api/dns/sync?dry_run=1``: a full sync now (a dry run changes nothing)."""
    state = request.app[STATE]
    if state.dns is None:
        raise DnsDisabled("DNS management is not running on this relay")
    dry_run = flag(request.query.get("dry_run"))
    if dry_run is None:
        return json_error(422, "invalid_dry_run", "dry_run must be 1/true/yes/on or 0/false/no/off")
    report = await state.dns.sync(dry_run=dry_run)
    state.log.info("api.dns_sync", dry_run=dry_run, errors=report.errors)
    return json_response(report)


async def delete_record(request: web.Request) -> web.Response:
    """``DELETE /api/dns/records/{fqdn}``: only records that carry our marker."""
    state = request.app[STATE]
    if state.dns is None:
        raise DnsDisabled("DNS management is not running on this relay")
    deleted = await state.dns.delete_record(request.match_info["fqdn"])
    state.log.info("api.dns_record_deleted", records=describe(deleted))
    return json_response({"deleted": describe(deleted)})


def add_dns_routes(app: web.Application) -> None:
    """Register the DNS routes (before the app's catch-all)."""
    app.router.add_get("/api/dns/records", list_records)
    app.router.add_post("/api/dns/sync", sync)
    app.router.add_delete("/api/dns/records/{fqdn}", delete_record)
