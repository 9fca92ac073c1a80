"""``GET /tunnel``: authenticate an agent, claim its host, run the tunnel until it ends."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from directory.errors import DirectoryError, Superseded
from relay.errors import MalformedFrame, ProtocolError
from relay.machine.events import tunnel_connected, tunnel_disconnected
from relay.machine.tunnels import Tunnel
from relay.proxy.responses import json_error
from relay.wire.protocol import PROTOCOL_VERSION, CloseCode, Frame, FrameCodec, Hello, Welcome

if TYPE_CHECKING:
    from relay.machine.state import RelayState

__all__ = ["tunnel_endpoint", "tunnel_server"]

_TRY_AGAIN_LATER = 1013  # RFC 6455: the server is overloaded or its store is down


def tunnel_server(state: RelayState) -> web.Server:
    """The low-level aiohttp server for agents' ``GET /tunnel`` upgrades (the front hands them).

    No application, router or middleware: an idle tunnel keeps its handler's whole call
    chain alive for as long as it lives, so every frame left out of that chain is saved
    once per tunnel, tens of thousands of times over.
    """
    return web.Server(
        functools.partial(tunnel_endpoint, state),
        handler_cancellation=True,
        access_log=None,
    )


async def tunnel_endpoint(state: RelayState, request: web.BaseRequest) -> web.StreamResponse:
    """Accept one agent's WebSocket and serve its tunnel until either side closes.

    Anything but a tunnel (a refusal, a failed handshake) closes the connection after its
    answer: the client's next request belongs to the front, not to this server.
    """
    if state.draining:
        return _final(
            json_error(503, "draining", "this relay is draining; connect elsewhere", retry_after=1)
        )
    ws = web.WebSocketResponse(
        max_msg_size=state.config.max_frame, compress=False, autoping=True, autoclose=True
    )
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:
        # A client or proxy that does not speak WebSocket as an agent must: say so, count it.
        state.log.info("tunnel.bad_handshake", remote_addr=request.remote or "", error=exc.text)
        state.metrics.protocol_errors.add(1, {"kind": "handshake"})
        return _final(
            json_error(exc.status, "bad_handshake", f"not a WebSocket upgrade: {exc.text}")
        )
    # The handshake's objects (Hello, loggers, token) die with its frame: this handler's
    # frame lives as long as the tunnel, tens of thousands of times over.
    handshake = await _handshake(state, request, ws)
    if handshake is None:
        return ws
    tunnel, early = handshake
    del handshake
    started = time.monotonic()
    handler = asyncio.current_task()
    if handler is not None:
        state.handlers.add(handler)
    announced = False  # a Connected event was emitted, so a Disconnected must follow
    try:
        # Welcome goes out alone and first, before any stream can be opened on the tunnel.
        await tunnel.ws.send_bytes(_welcome(state, tunnel))
        announced = await _install(state, tunnel)
        if state.draining:
            # The drain began while this tunnel was being claimed, and took its list of
            # tunnels without it: send the agent on now rather than hold it past the drain.
            tunnel.log.info("tunnel.refused_draining")
            await tunnel.close(CloseCode.DRAIN, "server draining")
        else:
            state.pings.add(tunnel)
            # A first Ping at once, after the lone Welcome agents expect: its Pong times the
            # round trip (stream windows grow by it), not a ping interval later.
            tunnel.queue(tunnel.ping())
            tunnel.log.info("tunnel.connected", agent_version=tunnel.agent_version)
            await tunnel.read_loop(early)
    except ConnectionError as exc:
        tunnel.log.info("tunnel.welcome_failed", error=str(exc))
    finally:
        await _ended(state, tunnel, announced=announced, started=started)
        if handler is not None:
            state.handlers.discard(handler)
    return ws


def _final(response: web.Response) -> web.Response:
    response.force_close()
    return response


async def _handshake(
    state: RelayState, request: web.BaseRequest, ws: web.WebSocketResponse
) -> tuple[Tunnel, list[Frame] | None] | None:
    """Authenticate, read the Hello, claim the host; None once the socket was closed.

    Returns the tunnel and the frames that came with the Hello (a ping, say).
    """
    cfg = state.config
    remote = request.remote or ""
    log = state.log.bind(remote_addr=remote)
    token = _bearer(request)
    try:
        async with state.handshake_slots:
            host = await state.hosts.authenticate(token) if token else None
    except DirectoryError as exc:
        log.warning("tunnel.auth_store_error", error=str(exc))
        await ws.close(code=_TRY_AGAIN_LATER, message=b"directory unavailable, retry")
        return None
    if host is None:
        log.warning("tunnel.unauthorized")
        state.metrics.tunnel_closes.add(1, {"code": str(CloseCode.UNAUTHORIZED)})
        await ws.close(code=CloseCode.UNAUTHORIZED, message=b"unauthorized: host token refused")
        return None
    log = log.bind(host_id=host.id, slug=host.slug)
    try:
        hello, early = await _receive_hello(ws, cfg.hello_timeout, cfg.max_frame)
    except ProtocolError as exc:
        log.warning("tunnel.bad_hello", error=str(exc))
        state.metrics.protocol_errors.add(1, {"kind": exc.code})
        await ws.close(code=CloseCode.PROTOCOL_ERROR, message=str(exc).encode()[:123])
        return None
    try:
        async with state.handshake_slots:
            if state.draining:
                # Queued for a slot when the drain began: it would miss the drain frame.
                log.info("tunnel.refused_draining")
                state.metrics.tunnel_closes.add(1, {"code": str(CloseCode.DRAIN)})
                await ws.close(code=CloseCode.DRAIN, message=b"server draining")
                return None
            held = hello.standby and await state.ownership.owner(host.id) is not None
            if not held:
                epoch = await state.ownership.claim(host.id, cfg.machine_id, cfg.owner_ttl_ms)
        if held:
            log.info("tunnel.standby_refused")
            await ws.close(code=CloseCode.REPLACED, message=b"host is held by another connection")
            return None
    except Superseded as exc:
        log.info("tunnel.superseded", error=str(exc))
        await ws.close(code=CloseCode.REPLACED, message=b"a newer connection holds this host")
        return None
    except DirectoryError as exc:
        log.warning("tunnel.claim_failed", error=str(exc))
        await ws.close(code=_TRY_AGAIN_LATER, message=b"directory unavailable, retry")
        return None
    tunnel = Tunnel(
        ws,
        host,
        epoch=epoch,
        remote_addr=remote,
        agent_version=hello.agent_version,
        local_limits=state.limits,
        peer_limits=hello.limits.clamped(state.limits),
        log=state.log,
    )
    tunnel.round_trips = state.metrics.tunnel_rtt
    return tunnel, early or None  # an empty list would live as long as the tunnel


async def _ended(state: RelayState, tunnel: Tunnel, *, announced: bool, started: float) -> None:
    """The tunnel's reading ended: close it, count it, announce it, give the host up."""
    state.pings.discard(tunnel)
    state.tunnels.remove(tunnel)
    await tunnel.close(tunnel.close_code or CloseCode.NORMAL, tunnel.close_reason or "closed")
    code = tunnel.close_code or CloseCode.NORMAL
    if code == CloseCode.PROTOCOL_ERROR:
        state.metrics.protocol_errors.add(1, {"kind": "frame"})
    state.metrics.tunnel_closes.add(1, {"code": str(code)})
    if announced:
        tunnel_disconnected(state.events, state.config.machine_id, tunnel, code)
    await _release(state, tunnel)
    tunnel.log.info(
        "tunnel.disconnected",
        close_code=code,
        reason=tunnel.close_reason,
        duration_s=round(time.monotonic() - started, 3),
    )


async def _install(state: RelayState, tunnel: Tunnel) -> bool:
    """Put ``tunnel`` in the table and announce it; close the one it replaces.

    False when a newer tunnel of the host is already here: this one is closed unannounced.
    """
    previous = state.tunnels.add(tunnel)
    if previous is tunnel:
        await tunnel.close(CloseCode.REPLACED, "replaced by a newer connection")
        return False
    # Before the replaced tunnel's Disconnected.
    tunnel_connected(state.events, state.config.machine_id, tunnel)
    if previous is not None:
        await previous.close(CloseCode.REPLACED, "replaced by a newer connection")
    return True


def _welcome(state: RelayState, tunnel: Tunnel) -> bytes:
    cfg = state.config
    welcome = Welcome(
        cfg.machine_id,
        tunnel.epoch,
        tunnel.host.id,
        tunnel.host.slug,
        cfg.ping_interval,
        state.limits,
        state.url_for(tunnel.host.slug, test=tunnel.host.test),
        tunnel.host.name,
    )
    return tunnel.codec.message(welcome)


async def _release(state: RelayState, tunnel: Tunnel) -> None:
    """Give up ownership unless a newer epoch holds it (compare-and-delete)."""
    try:
        await state.ownership.release(tunnel.host.id, state.config.machine_id, tunnel.epoch)
    except DirectoryError as exc:
        # The owner key expires on its own within the TTL; say so rather than hide it.
        state.metrics.store_errors.add(1, {"op": "release"})
        tunnel.log.warning("tunnel.release_failed", error=str(exc))


async def _receive_hello(
    ws: web.WebSocketResponse, timeout: float, max_frame: int
) -> tuple[Hello, list[Frame]]:
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError as exc:
        raise MalformedFrame(f"no Hello within {timeout:g} s") from exc
    if msg.type is not aiohttp.WSMsgType.BINARY:
        raise MalformedFrame(f"expected a binary Hello frame, got {msg.type.name}")
    hello, rest = FrameCodec(max_frame=max_frame).decode_opening(msg.data, Hello)
    if hello.version != PROTOCOL_VERSION:
        raise MalformedFrame(f"protocol version {hello.version} unsupported ({PROTOCOL_VERSION})")
    return hello, rest


def _bearer(request: web.BaseRequest) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
