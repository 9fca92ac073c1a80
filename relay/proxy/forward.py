"""Requests for tunnels held by another machine: replay (Fly) or forward (private network).

Fly's proxy replays a request to another machine when the response carries
``fly-replay: instance=<id>``, but it cannot carry request bodies over 1 MB or of unknown
length, and WebSocket upgrades were unreliable in practice; those are forwarded over the
private network instead, machine to machine, authenticated with the cluster secret.

Loop guard: a request that already hopped once (``fly-replay-src`` from Fly, or our own
authenticated ``X-Relay-Hop``) is never sent on again; if it still finds no tunnel it is
answered 503.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from relay.errors import PeerFailed, peer_errors
from relay.proxy.headers import (
    HOP_BY_HOP,
    headers_for_peer,
    is_websocket_upgrade,
    websocket_protocols,
)
from relay.proxy.origin import AUTH, CLIENT_IP, HOP, PROTO, Origin, resolve_origin
from relay.proxy.responses import error_answer
from relay.tracing import carry_current
from relay.wire.ws_pump import pump_sockets

if TYPE_CHECKING:
    from directory.machines import MachineRecord
    from relay.machine.state import RelayState

__all__ = [
    "MAX_REPLAY_BODY",
    "Origin",
    "forward",
    "origin_of",
    "relay_response",
    "replay",
    "replayable",
]

MAX_REPLAY_BODY: Final = 1024 * 1024
ORIGIN: web.RequestKey[Origin] = web.RequestKey("relay_origin", Origin)


def origin_of(state: RelayState, request: web.Request) -> Origin:
    """Work out the client and the hop state of a request, trusting only what is proven."""
    cached: Origin | None = request.get(ORIGIN)
    if cached is not None:
        return cached
    origin = resolve_origin(
        request.headers.get,
        peer=request.remote or "",
        scheme=request.scheme,
        cluster_secret=state.cluster_secret,
        trust_fly_headers=state.config.trust_fly_headers,
    )
    request[ORIGIN] = origin
    return origin


def replayable(request: web.Request) -> bool:
    """Whether Fly's proxy can replay this request (no upgrade, small sized body)."""
    if is_websocket_upgrade(request.headers):
        return False
    if not request.body_exists:
        return True
    length = request.content_length
    return length is not None and length <= MAX_REPLAY_BODY


def replay(state: RelayState, machine_id: str) -> web.Response:
    """Ask Fly's proxy to send this request to ``machine_id`` (no body, by contract)."""
    state.metrics.replays.add(1)
    return web.Response(status=409, headers={"fly-replay": f"instance={machine_id}"})


def _outbound_headers(state: RelayState, request: web.Request, origin: Origin) -> CIMultiDict[str]:
    peer_headers = headers_for_peer(list(request.headers.items()))
    carry_current(peer_headers, "")  # the peer's span is a child of ours
    headers = CIMultiDict(peer_headers)
    headers[HOP] = state.config.machine_id
    headers[AUTH] = state.cluster_secret
    headers[CLIENT_IP] = origin.client_ip
    headers[PROTO] = origin.proto
    return headers


async def forward(
    state: RelayState, request: web.Request, machine: MachineRecord, origin: Origin
) -> web.StreamResponse:
    """Carry the request to ``machine`` over the private network, streaming both ways."""
    headers = _outbound_headers(state, request, origin)
    # encoded: the path goes on byte for byte (yarl would resolve dot segments and
    # decode escapes, so the upstream would see another path than via the owner).
    url = URL(machine.address.rstrip("/") + request.raw_path, encoded=True)
    if is_websocket_upgrade(request.headers):
        return await _forward_websocket(state, request, url, headers)
    try:
        # PeerUnreachable (nothing sent) goes to the caller, which may wait for the host
        # to land elsewhere.
        with peer_errors(f"forward to {machine.machine_id}"):
            upstream = await state.peer_client.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
    except PeerFailed as exc:
        return _forward_failed(state, exc)
    state.metrics.forwards.add(1)
    response, error = await relay_response(request, upstream)
    if error is not None:
        state.metrics.proxy_errors.add(1, {"reason": "forward_interrupted"})
        state.log.warning("proxy.forward_interrupted", error=repr(error))
    return response


def _forward_failed(state: RelayState, exc: PeerFailed) -> web.Response:
    state.metrics.proxy_errors.add(1, {"reason": "forward_failed"})
    state.log.warning("proxy.forward_failed", error=str(exc))
    return error_answer(exc, "the machine holding the host did not answer")


async def relay_response(
    request: web.Request, upstream: aiohttp.ClientResponse
) -> tuple[web.StreamResponse, Exception | None]:
    """Stream ``upstream``'s answer to the client (hop-by-hop headers dropped).

    Returns the response and, if the upstream broke off mid-body, its error: the client's
    connection is then cut, the only honest signal once the headers are out.
    """
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            if request.transport is not None:
                request.transport.close()
            return response, exc
        await response.write_eof()
        return response, None


async def _forward_websocket(
    state: RelayState, request: web.Request, url: URL, headers: CIMultiDict[str]
) -> web.StreamResponse:
    protocols = websocket_protocols(request.headers)
    try:
        with peer_errors("forward a WebSocket"):
            peer = await state.peer_client.ws_connect(
                url.with_scheme("ws" if url.scheme == "http" else "wss"),
                headers=headers,
                protocols=protocols,
                max_msg_size=0,
            )
    except PeerFailed as exc:
        handshake = exc.__cause__
        if isinstance(handshake, aiohttp.WSServerHandshakeError):
            return web.Response(status=handshake.status, text=handshake.message)
        return _forward_failed(state, exc)
    state.metrics.forwards.add(1)
    client = web.WebSocketResponse(
        protocols=[peer.protocol] if peer.protocol else (), max_msg_size=0
    )
    await client.prepare(request)
    async with peer:
        await pump_sockets(client, peer)
    return client
