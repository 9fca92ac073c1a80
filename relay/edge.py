"""`relay edge`: a local stand-in for Fly.io's proxy in front of several relay machines.

What it copies from Fly's proxy, so multi-machine behaviour can be tested on one box:

* new requests are spread over the machines (round robin);
* ``fly-force-instance-id: <id>`` pins a request to one machine;
* a response carrying ``fly-replay: instance=<id>`` is not returned to the client: the
  same request is sent to that machine, with ``fly-replay-src`` saying where it came from;
* a request whose body is over 1 MB, or of unknown length, cannot be replayed: such a
  replay answer becomes an error, as on Fly;
* WebSocket upgrades are carried (and replayed when the handshake answer says so).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from relay.config import parse_hostport
from relay.errors import ConfigError
from relay.logs import configure_logging, get_logger
from relay.proxy.forward import MAX_REPLAY_BODY, relay_response
from relay.proxy.headers import HOP_BY_HOP, is_websocket_upgrade, websocket_protocols
from relay.proxy.responses import json_error
from relay.wire.ws_pump import pump_sockets

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["EdgeConfig", "parse_machines", "run_edge"]

MAX_REPLAYS = 3
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_INSTANCE = re.compile(r"(?:^|[;,\s])instance=([A-Za-z0-9_.-]+)")
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Where the edge listens and which machines stand behind it."""

    listen: str
    machines: dict[str, str]  # machine id -> base URL


def parse_machines(specs: Sequence[str]) -> dict[str, str]:
    """``ID=URL`` pairs into a mapping, with a clear error for a malformed one."""
    machines: dict[str, str] = {}
    for spec in specs:
        machine_id, sep, url = spec.partition("=")
        if not sep or not machine_id or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--machine expects ID=http://HOST:PORT, got {spec!r}")
        machines[machine_id] = url.rstrip("/")
    if not machines:
        raise ConfigError("relay edge needs at least one --machine ID=URL")
    return machines


def replay_target(headers: CIMultiDict[str] | aiohttp.typedefs.LooseHeaders) -> str | None:
    """The instance a ``fly-replay`` header asks for, if any."""
    value = CIMultiDict(headers).get("fly-replay")
    if not value:
        return None
    match = _INSTANCE.search(value)
    return match.group(1) if match else None


class Edge:
    """The proxy itself."""

    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.log = get_logger("edge")
        self._order = itertools.cycle(list(cfg.machines))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )

    def _pick(self, request: web.Request) -> str | None:
        forced = request.headers.get("fly-force-instance-id")
        if forced:
            return forced if forced in self.cfg.machines else None
        return next(self._order)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxy one request, following ``fly-replay`` answers."""
        machine = self._pick(request)
        if machine is None:
            return json_error(404, "no_such_instance", "fly-force-instance-id names no machine")
        if is_websocket_upgrade(request.headers):
            return await self._websocket(request, machine)
        headers = _outbound_headers(request)
        body, replayable = await _body_of(request)
        tried: set[str] = set()
        for _ in range(MAX_REPLAYS + len(self.cfg.machines) + 1):
            upstream = await self._send(request, machine, headers, body, tried)
            if isinstance(upstream, str):
                machine = upstream
                continue
            if isinstance(upstream, web.Response):
                return upstream
            target = replay_target(upstream.headers)
            if target is None:
                response, error = await relay_response(request, upstream)
                if error is not None:
                    self.log.warning(
                        "edge.response_interrupted", machine=machine, error=repr(error)
                    )
                return response
            upstream.release()
            if not replayable:
                self.log.warning("edge.replay_refused", machine=machine, target=target)
                return json_error(
                    502,
                    "replay_refused",
                    "fly-replay cannot carry a body over 1 MB or of unknown length",
                )
            if target not in self.cfg.machines:
                return json_error(502, "replay_unknown_instance", f"no machine {target!r}")
            headers = CIMultiDict(headers)
            headers["fly-replay-src"] = f"instance={machine};region=local;state="
            self.log.debug("edge.replayed", source=machine, target=target)
            machine = target
        return json_error(508, "replay_loop", "too many fly-replay hops")

    async def _send(
        self,
        request: web.Request,
        machine: str,
        headers: CIMultiDict[str],
        body: bytes | aiohttp.StreamReader | None,
        tried: set[str],
    ) -> aiohttp.ClientResponse | web.Response | str:
        """One attempt: the machine's response, an error response, or the next machine."""
        try:
            return await self.session.request(
                request.method,
                self.cfg.machines[machine] + request.raw_path,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as exc:
            # Like Fly's proxy: a machine that refuses connections (stopped, restarting)
            # is skipped and the request goes to the next one, unless it was pinned.
            self.log.info("edge.machine_unreachable", machine=machine, error=str(exc))
            fallback = self._fallback(request, machine, tried)
            tried.add(machine)
            return fallback or json_error(502, "machine_unreachable", f"{machine}: {exc}")
        except aiohttp.ClientConnectionError as exc:
            # A pooled connection the machine closed as we reused it (it is shutting
            # down): like a proxy's next-upstream rule, retry idempotent requests once.
            if request.method in _IDEMPOTENT and machine not in tried:
                tried.add(machine)
                return self._fallback(request, machine, tried) or machine
            self.log.warning("edge.machine_failed", machine=machine, error=str(exc))
            return json_error(502, "machine_failed", f"{machine}: {exc}")
        except aiohttp.ClientError as exc:
            self.log.warning("edge.machine_failed", machine=machine, error=str(exc))
            return json_error(502, "machine_failed", f"{machine}: {exc}")

    def _fallback(self, request: web.Request, failed: str, tried: set[str]) -> str | None:
        if "fly-force-instance-id" in request.headers:
            return None
        for machine in self.cfg.machines:
            if machine != failed and machine not in tried:
                return machine
        return None

    async def _websocket(self, request: web.Request, machine: str) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v)
            for k, v in _outbound_headers(request).items()
            if k.lower() not in _WS_HANDSHAKE and k.lower() != "sec-websocket-protocol"
        )
        protocols = websocket_protocols(request.headers)
        tried: set[str] = set()
        for _ in range(MAX_REPLAYS + len(self.cfg.machines) + 1):
            url = self.cfg.machines[machine].replace("http", "ws", 1) + request.raw_path
            try:
                upstream = await self.session.ws_connect(
                    url, headers=headers, protocols=protocols, autoping=True, max_msg_size=0
                )
            except aiohttp.WSServerHandshakeError as exc:
                target = replay_target(exc.headers or {})
                if target is None or target not in self.cfg.machines:
                    return web.Response(status=exc.status, text=exc.message)
                headers["fly-replay-src"] = f"instance={machine};region=local;state="
                machine = target
                continue
            except aiohttp.ClientConnectorError as exc:
                fallback = self._fallback(request, machine, tried)
                if fallback is None:
                    return json_error(502, "machine_unreachable", f"{machine}: {exc}")
                tried.add(machine)
                machine = fallback
                continue
            except aiohttp.ClientError as exc:
                return json_error(502, "machine_failed", f"{machine}: {exc}")
            return await _pump_websocket(request, upstream)
        return json_error(508, "replay_loop", "too many fly-replay hops")

    async def close(self) -> None:
        """Close the client pool."""
        await self.session.close()


async def _body_of(request: web.Request) -> tuple[bytes | aiohttp.StreamReader | None, bool]:
    """The body to send, and whether the request could be replayed (Fly's 1 MB rule)."""
    if not request.body_exists:
        return None, True
    length = request.content_length
    if length is not None and length <= MAX_REPLAY_BODY:
        return await request.read(), True
    return request.content, False


def _outbound_headers(request: web.Request) -> CIMultiDict[str]:
    drop = HOP_BY_HOP - {"upgrade", "connection"}
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    headers.popall("fly-replay-src", None)
    peer = request.remote or ""
    headers["Fly-Client-IP"] = peer
    headers["X-Forwarded-For"] = peer
    return headers


async def _pump_websocket(
    request: web.Request, upstream: aiohttp.ClientWebSocketResponse
) -> web.StreamResponse:
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=0
    )
    await client.prepare(request)
    async with upstream:
        await pump_sockets(client, upstream)
    return client


async def run_edge(cfg: EdgeConfig) -> int:
    """Serve until SIGTERM/SIGINT."""
    configure_logging()
    edge = Edge(cfg)
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", edge.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, auto_decompress=False)
    await runner.setup()
    host, port = parse_hostport(cfg.listen)
    await web.TCPSite(runner, host, port, backlog=1024).start()  # reconnect storms
    edge.log.info("edge.started", listen=cfg.listen, machines=sorted(cfg.machines))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await edge.close()
    return 0
