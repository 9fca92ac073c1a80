"""The relay's aiohttp application: host routing in front, its own routes behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from directory.errors import DirectoryError
from relay.api.dns import add_dns_routes
from relay.api.events import add_event_routes
from relay.api.hosts import add_routes, admin_authorized
from relay.api.ui import add_ui_routes
from relay.machine.state import STATE, RelayState
from relay.proxy.app_path import proxy_request
from relay.proxy.responses import json_error
from relay.proxy.routing import slug_from_host

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

__all__ = ["build_app"]


def build_app(state: RelayState) -> web.Application:
    """The application serving both client traffic and the relay's own routes."""
    base_domain = state.config.base_domain
    # Test hosts' records live in --dns-test-zone; their requests arrive under it.
    test_zone = (state.config.dns_test_zone or "").strip(".").lower() or None

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Host decides first: every path of <slug>.<base-domain> belongs to the host.
        slug = slug_from_host(request.host, base_domain)
        if slug is None and test_zone is not None:
            slug = slug_from_host(request.host, test_zone)
        if slug is not None:
            return await proxy_request(state, request, slug)
        path = request.path
        if path.startswith("/api/") and not admin_authorized(state, request):
            return json_error(401, "unauthorized", "admin token required (Authorization: Bearer)")
        try:
            return await handler(request)
        except DirectoryError as exc:
            if exc.http_status >= 500:
                state.log.warning("api.store_error", path=path, error=str(exc))
            return json_error(exc.http_status, exc.code, str(exc))
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.empty_body is False and path.startswith("/api/"):
                return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            raise

    app = web.Application(middlewares=[one_request, front], client_max_size=1 << 20)
    app[STATE] = state
    app.router.add_get("/tunnel", _not_an_upgrade)
    add_routes(app)
    add_event_routes(app)
    add_dns_routes(app)
    add_ui_routes(app)
    # Last and catch-all: keeps routing of host traffic to a few dict lookups (no
    # HTTPNotFound built per request) and gives other unknown paths a JSON 404.
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


@web.middleware
async def one_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve the one request this connection was handed, then close it.

    Connections reach aiohttp only by handoff from the fast front (relay/front.py); the
    client's next request is read by the front again, with its header timeout and its
    fast path.
    """
    response = await handler(request)
    if not response.prepared:
        response.force_close()
    elif request.protocol is not None and not isinstance(response, web.WebSocketResponse):
        request.protocol.keep_alive(val=False)
    return response


async def _not_an_upgrade(_request: web.Request) -> web.Response:
    """``GET /tunnel`` without an upgrade (the front hands upgrades to the tunnel server)."""
    return json_error(400, "bad_handshake", "GET /tunnel takes an agent's WebSocket upgrade")


async def _not_found(request: web.Request) -> web.Response:
    """404, or 405 with ``Allow`` when the path exists for other methods.

    The catch-all route matches every method, so aiohttp's own 405 never happens: the
    other routes are asked here instead (only on this error path).
    """
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _match, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        response = json_error(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
        )
        response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
    return json_error(404, "not_found", f"no route for {request.method} {request.path}")
