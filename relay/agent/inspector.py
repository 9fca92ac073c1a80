"""The local request inspector: `relay agent --inspect HOST:PORT`.

A small aiohttp app on its own listener (never reachable through a tunnel: the relay's
requests go only to the local service) that shows the agent's last requests from its
:class:`~relay.agent.observe.Ring` and replays one to the local service on demand:

    GET  /                              the page (relay/agent/inspector_page.py)
    GET  /api/requests                  summaries, newest first
    GET  /api/requests/{id}             one request: headers and bodies (up to 64 KiB each)
    POST /api/requests/{id}/replay      send it again to the local service, not the relay

The inspector shows headers and bodies (cookies, tokens), so it guards itself against
other web pages: a request whose ``Host`` is not the inspector's own address gets 403
(DNS rebinding), and so does a POST from another ``Origin`` (cross-site replays).
"""

from __future__ import annotations

import base64
import ipaddress
import time
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from relay.agent.inspector_page import PAGE
from relay.agent.observe import BODY_CAP, Ring, Seen
from relay.config import is_loopback, parse_hostport
from relay.errors import StartupError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from structlog.typing import FilteringBoundLogger

    from relay.wire.protocol import Headers

__all__ = ["Inspector"]

_RING: Final = web.AppKey("ring", Ring)
# Not replayed: hop-by-hop headers and the framing aiohttp writes for the new request.
_NOT_REPLAYED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
        "transfer-encoding",
        "expect",
    }
)
_REPLAY_TIMEOUT: Final = 30.0


class Inspector:
    """The inspector's listener and its replay client."""

    def __init__(
        self, address: str, ring: Ring, log: FilteringBoundLogger, *, allow_remote: bool
    ) -> None:
        self.host, self.port = parse_hostport(address)
        self.ring = ring
        self.log = log
        self.allow_remote = allow_remote
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """Where a browser finds the page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Listen; raises :class:`StartupError` when the address is taken."""
        app = web.Application(middlewares=[self._guard], client_max_size=1024)
        app[_RING] = self.ring
        app[_INSPECTOR] = self
        app.router.add_get("/", _page)
        app.router.add_get("/api/requests", _list)
        app.router.add_get("/api/requests/{id}", _detail)
        app.router.add_post("/api/requests/{id}/replay", _replay)
        self._client = aiohttp.ClientSession(
            auto_decompress=False,  # show the bytes as the service sends them
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=_REPLAY_TIMEOUT, sock_connect=10),
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self.close()
            raise StartupError(f"--inspect {self.host}:{self.port}: {exc.strerror}") from exc
        if self.port == 0:
            server = self._runner.addresses[0]
            self.port = int(server[1])
        if not is_loopback(self.host):
            self.log.warning(
                "agent.inspector_remote",
                message="the inspector shows request headers and bodies to anyone who"
                " can reach this address",
                address=f"{self.host}:{self.port}",
            )
        self.log.info("agent.inspector_listening", url=self.url)

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    def own_address(self, value: str) -> bool:
        """Whether a Host (or Origin's host) names this inspector, not some other name."""
        try:
            url = URL(f"http://{value}")
            host, port = url.host, url.port
        except ValueError:
            return False
        if port != self.port or not host:
            return False
        if host == "localhost" or host == self.host.lower():
            return True
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False  # a DNS name other than localhost: a rebinding attempt
        # An address literal cannot be rebound; on loopback only loopback ones are ours.
        return ip.is_loopback or not is_loopback(self.host)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self.own_address(request.host):
            self.log.warning("agent.inspector_refused", host=request.host[:200])
            return _error(403, "forbidden_host", "this is the agent's inspector; Host refused")
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin is not None:
            parts = URL(origin) if origin != "null" else None
            if parts is None or parts.host is None or not self.own_address(parts.raw_authority):
                self.log.warning("agent.inspector_refused", origin=origin[:200])
                return _error(403, "forbidden_origin", "cross-site requests are refused")
        return await handler(request)

    async def replay(self, seen: Seen) -> dict[str, object]:
        """Send ``seen``'s request again to its tunnel's local service; its answer."""
        client = self._client
        assert client is not None  # noqa: S101 - started before any request
        headers = CIMultiDict((k, v) for k, v in seen.req_headers if k.lower() not in _NOT_REPLAYED)
        url = URL(seen.tap.upstream.rstrip("/") + seen.target, encoded=True)
        body = bytes(seen.req_body or b"")
        started = time.perf_counter()
        async with client.request(
            seen.method,
            url,
            headers=headers,
            data=body if body or seen.method in {"POST", "PUT", "PATCH"} else None,
            allow_redirects=False,
        ) as resp:
            data = bytearray()
            while len(data) <= BODY_CAP:
                piece = await resp.content.read(BODY_CAP + 1 - len(data))
                if not piece:
                    break
                data += piece
            duration = (time.perf_counter() - started) * 1000
            raw = resp.raw_headers
            return {
                "status": resp.status,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw],
                "body": _body(data[:BODY_CAP], truncated=len(data) > BODY_CAP),
                "duration_ms": round(duration, 3),
            }


_INSPECTOR: Final = web.AppKey("inspector", Inspector)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _body(data: bytes | bytearray | None, *, truncated: bool) -> dict[str, object]:
    raw = bytes(data or b"")
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    return {"encoding": encoding, "data": text, "size": len(raw), "truncated": truncated}


def _pairs(headers: Headers) -> list[list[str]]:
    return [[k, v] for k, v in headers]


def _summary(seen: Seen) -> dict[str, object]:
    return {
        "id": seen.id,
        "tunnel": seen.tap.label or seen.tap.slug,
        "slug": seen.tap.slug,
        "at": seen.at,
        "method": seen.method,
        "path": seen.target,
        "status": seen.status,
        "finished": seen.finished,
        "duration_ms": round(seen.duration_ms, 3),
        "bytes": seen.resp_bytes,
        "error": seen.error,
        "websocket": seen.websocket,
    }


def _find(request: web.Request) -> Seen | None:
    try:
        id_ = int(request.match_info["id"])
    except ValueError:
        return None
    return request.app[_RING].get(id_)


async def _page(_request: web.Request) -> web.Response:
    return web.Response(
        text=PAGE,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline';"
            " style-src 'unsafe-inline'; connect-src 'self'",
            "X-Frame-Options": "DENY",
        },
    )


async def _list(request: web.Request) -> web.Response:
    ring = request.app[_RING]
    return web.json_response({"requests": [_summary(s) for s in reversed(list(ring))]})


async def _detail(request: web.Request) -> web.Response:
    seen = _find(request)
    if seen is None:
        return _error(404, "not_found", "no such request (the inspector keeps the last ones)")
    return web.json_response(
        _summary(seen)
        | {
            "upstream": seen.tap.upstream,
            "request_headers": _pairs(seen.req_headers),
            "request_body": _body(seen.req_body, truncated=seen.req_truncated),
            "response_headers": _pairs(seen.resp_headers),
            "response_body": _body(seen.resp_body, truncated=seen.resp_truncated),
        }
    )


async def _replay(request: web.Request) -> web.Response:
    seen = _find(request)
    if seen is None:
        return _error(404, "not_found", "no such request (the inspector keeps the last ones)")
    if seen.websocket:
        return _error(409, "websocket", "a WebSocket cannot be replayed")
    if seen.req_truncated or seen.req_body is None:
        return _error(
            409, "body_truncated", "the request body was cut at 64 KiB; it cannot be replayed"
        )
    inspector = request.app[_INSPECTOR]
    try:
        answer = await inspector.replay(seen)
    except (aiohttp.ClientError, TimeoutError) as exc:
        inspector.log.warning("agent.replay_failed", id=seen.id, error=repr(exc))
        return _error(502, "upstream_unreachable", f"the local service did not answer: {exc!r}")
    inspector.log.info("agent.replayed", id=seen.id, status=answer["status"])
    return web.json_response(answer)
