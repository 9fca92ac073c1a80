"""The relay's admin API (``/api/...``), health and metrics endpoints."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from directory.events import HostRegistered, HostRemoved
from relay.api.dns import DnsStatus, dns_statuses
from relay.machine.metrics import render_prometheus
from relay.machine.state import STATE, RelayState
from relay.proxy.responses import json_error, json_response
from relay.wire.protocol import CloseCode

if TYPE_CHECKING:
    from directory.models import HostRecord
    from directory.presence import Presence

__all__ = ["add_routes", "admin_authorized"]


class CreateHost(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /api/hosts``."""

    name: str
    slug: str | None = None
    test: bool = False  # a test host: may use test prefixes, lives in the DNS test zone


class HostView(msgspec.Struct, frozen=True):
    """A host as the API shows it."""

    id: str
    slug: str
    name: str
    url: str
    online: bool
    machine_id: str | None
    epoch: int | None
    last_connected_at: str | None
    last_disconnected_at: str | None
    disconnect_reason: str | None
    agent_version: str | None
    remote_addr: str | None
    dns: DnsStatus


class CreatedHost(msgspec.Struct, frozen=True):
    """Answer to ``POST /api/hosts``: the token appears here and nowhere else."""

    id: str
    slug: str
    name: str
    url: str
    token: str


_decode_create = msgspec.json.Decoder(CreateHost).decode


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _view(
    state: RelayState, host: HostRecord, presence: Presence | None, dns: DnsStatus | None = None
) -> HostView:
    # Status comes from the presence projection only (one truth for every machine).
    p = presence
    return HostView(
        id=host.id,
        slug=host.slug,
        name=host.name,
        url=state.url_for(host.slug, test=host.test),
        online=p.online if p else False,
        machine_id=p.machine_id if p else None,
        epoch=p.epoch if p else None,
        last_connected_at=_rfc3339(p.last_connected_at) if p else None,
        last_disconnected_at=_rfc3339(p.last_disconnected_at) if p else None,
        disconnect_reason=p.disconnect_reason if p else None,
        agent_version=p.agent_version if p else None,
        remote_addr=p.remote_addr if p else None,
        dns=dns or DnsStatus(),
    )


async def create_host(request: web.Request) -> web.Response:
    """``POST /api/hosts`` → 201 with the host and its one-time token."""
    state = request.app[STATE]
    try:
        body = _decode_create(await request.read())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return json_error(422, "invalid_body", f"expected {{name, slug?}}: {exc}")
    host, token = await state.hosts.create(body.name, body.slug, test=body.test)
    state.events.emit(HostRegistered(host_id=host.id, slug=host.slug, name=host.name))
    if state.dns is not None:
        await state.dns.mark_dirty([host.id])  # its record now, not at the next event read
    state.log.info("api.host_created", host_id=host.id, slug=host.slug)
    created = CreatedHost(
        host.id, host.slug, host.name, state.url_for(host.slug, test=host.test), token
    )
    return json_response(created, status=201)


async def list_hosts(request: web.Request) -> web.Response:
    """``GET /api/hosts``."""
    state = request.app[STATE]
    hosts = await state.hosts.list()
    presence = await state.presence.get_many([h.id for h in hosts])
    dns = await dns_statuses(state, [h.id for h in hosts])
    return json_response([_view(state, h, presence.get(h.id), dns.get(h.id)) for h in hosts])


async def show_host(request: web.Request) -> web.Response:
    """``GET /api/hosts/{id or slug}``."""
    state = request.app[STATE]
    host = await state.hosts.get(request.match_info["ref"])
    presence = await state.presence.get(host.id)
    dns = await dns_statuses(state, [host.id])
    return json_response(_view(state, host, presence, dns.get(host.id)))


async def delete_host(request: web.Request) -> web.Response:
    """``DELETE /api/hosts/{id}``: close its tunnel (4003), free its slug."""
    state = request.app[STATE]
    host = await state.hosts.get(request.match_info["ref"])
    await state.hosts.delete(host.id)
    state.events.emit(HostRemoved(host_id=host.id, slug=host.slug))
    if state.dns is not None:
        await state.dns.mark_dirty([host.id])  # its records go within the worker's poll
    tunnel = state.tunnels.by_host.get(host.id)
    if tunnel is not None:
        await tunnel.close(CloseCode.UNAUTHORIZED, "host removed")
    state.log.info("api.host_removed", host_id=host.id, slug=host.slug)
    return web.Response(status=204)


async def list_machines(request: web.Request) -> web.Response:
    """``GET /api/machines``: every live relay machine."""
    state = request.app[STATE]
    machines = await state.machines.list()
    return json_response(
        [
            {
                "machine_id": m.machine_id,
                "address": m.address,
                "state": m.state,
                "tunnels": m.tunnels,
                "last_seen": _rfc3339(m.last_seen),
            }
            for m in machines
        ]
    )


async def healthz(request: web.Request) -> web.Response:
    """The process lives; the body says whether the store answers (as last seen)."""
    state = request.app[STATE]
    return json_response({"status": "ok", "store": "ok" if state.store_ok else "unreachable"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic unless draining (the listener opens once started).

    A store outage does not fail it: held tunnels keep serving, and failing every
    machine's check at once would take the whole fleet out of the proxy's routing.
    """
    state = request.app[STATE]
    if state.draining:
        return json_error(503, "draining", "this relay is draining")
    return json_response(
        {
            "status": "ready",
            "machine_id": state.config.machine_id,
            "store": "ok" if state.store_ok else "unreachable",
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text on the public listener: only with ``--metrics-token``.

    Behind Fly's proxy (or any proxy) every peer address is the proxy's, so an address
    rule would serve anyone; ``--metrics-listen`` serves it on its own port instead.
    """
    state = request.app[STATE]
    token = state.config.metrics_token
    authorized = bool(token) and hmac.compare_digest(
        request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()
    )
    if not authorized:
        return json_error(
            403,
            "forbidden",
            "metrics are served on --metrics-listen, or here with --metrics-token",
        )
    return metrics_response()


def metrics_response() -> web.Response:
    """The Prometheus text of every metric of this process."""
    return web.Response(
        body=render_prometheus(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def admin_authorized(state: RelayState, request: web.Request) -> bool:
    """Whether the request carries the admin token (constant-time comparison)."""
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), state.admin_token.encode())


def add_routes(app: web.Application) -> None:
    """Register the relay's own routes."""
    app.router.add_post("/api/hosts", create_host)
    app.router.add_get("/api/hosts", list_hosts)
    app.router.add_get("/api/hosts/{ref}", show_host)
    app.router.add_delete("/api/hosts/{ref}", delete_host)
    app.router.add_get("/api/machines", list_machines)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
