"""Admin API of the event log: ``GET /api/events`` and ``POST /api/directory/rebuild``.

``GET /api/events?after=ID&limit=N`` pages through the log, oldest first::

    {"events": [{"id": "1716..-0", "kind": "connected", "at": "2024-..Z", ...}, ...],
     "next": "1716..-0"}

``next`` is the ``after`` of the next page: the last entry *scanned* (entries of unknown
kinds are skipped but still advance it), or the given ``after`` when nothing is new, so a
client can poll with it. ``limit`` is 1-1000 (default 100); anything else, or an ``after``
that is not an entry id, is a 422.

``POST /api/directory/rebuild[?dry_run=1]`` rebuilds the presence projection from the log
(:mod:`directory.rebuild`) and answers with the report. One rebuild at a time in the whole
fleet (a lease); a second one gets 409.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from directory.errors import InvalidInput
from directory.events import parse_entry_id
from directory.keys import Keys
from directory.rebuild import rebuild_presence
from directory.reconciler import Lease
from relay.api.query import flag
from relay.machine.state import STATE
from relay.proxy.responses import json_error, json_response

if TYPE_CHECKING:
    from aiohttp import web

    from directory.events import EventLog

__all__ = ["add_event_routes"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Long enough for a rebuild of a full log; released as soon as it finishes.
_REBUILD_LEASE_S = 300.0


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


async def list_events(request: web.Request) -> web.Response:
    """``GET /api/events?after=ID&limit=N``."""
    state = request.app[STATE]
    after = request.query.get("after") or None
    try:
        limit = _limit(request.query.get("limit"))
        if after is not None:
            parse_entry_id(after)
    except InvalidInput as exc:
        code = "invalid_limit" if str(exc).startswith("limit") else "invalid_after"
        return json_error(422, code, str(exc))
    log: EventLog = state.events.log
    page = await log.read_page(after, limit)
    events: list[dict[str, Any]] = []
    for entry_id, event in page.events:
        body: dict[str, Any] = msgspec.to_builtins(event)
        body["at"] = _rfc3339(event.at)
        events.append({"id": entry_id, **body})
    return json_response({"events": events, "next": page.last_id or after})


async def rebuild(request: web.Request) -> web.Response:
    """``POST /api/directory/rebuild[?dry_run=1]`` → the rebuild report."""
    state = request.app[STATE]
    dry_run = flag(request.query.get("dry_run"))
    if dry_run is None:
        return json_error(422, "invalid_dry_run", "dry_run must be 1/true/yes/on or 0/false/no/off")
    lease = Lease(
        state.redis,
        Keys(state.config.key_prefix),
        "presence-rebuild",
        f"{state.config.machine_id}:{secrets.token_hex(4)}",  # this request, not the machine
        ttl=_REBUILD_LEASE_S,
    )
    if not await lease.acquire():
        return json_error(409, "rebuild_running", "another presence rebuild is running")
    try:
        report = await rebuild_presence(state.events.log, state.presence, dry_run=dry_run)
    finally:
        await lease.release()
    state.log.info(
        "presence.rebuilt",
        dry_run=dry_run,
        complete=report.complete,
        events=report.events,
        hosts=report.hosts,
        added=report.added,
        removed=report.removed,
        changed=report.changed,
    )
    return json_response(report)


def add_event_routes(app: web.Application) -> None:
    """Register the event log's admin routes."""
    app.router.add_get("/api/events", list_events)
    app.router.add_post("/api/directory/rebuild", rebuild)
