"""A client's WebSocket carried through the tunnel (relay side)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from relay.errors import StreamError
from relay.proxy.forward import origin_of
from relay.proxy.headers import response_headers_for_client, websocket_headers_for_upstream
from relay.proxy.responses import json_error
from relay.wire.protocol import ResetCode, RespHead, WsAccept, WsClose, WsMsg, WsOpen

if TYPE_CHECKING:
    from relay.machine.state import RelayState
    from relay.machine.tunnels import Tunnel
    from relay.wire.channel import StreamChannel

__all__ = ["proxy_websocket"]


async def proxy_websocket(
    state: RelayState, request: web.Request, tunnel: Tunnel
) -> web.StreamResponse:
    """Open the upstream WebSocket through the agent, then pump messages both ways."""
    channel = tunnel.open_stream()
    try:
        origin = origin_of(state, request)
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        await channel.send(
            WsOpen(
                channel.sid,
                request.raw_path,
                websocket_headers_for_upstream(
                    list(request.headers.items()),
                    client_ip=origin.client_ip,
                    proto=origin.proto,
                    host=request.host,
                    trust_fly_headers=state.config.trust_fly_headers,
                ),
                protocols,
                request.headers.get("traceparent", ""),
            )
        )
        try:
            async with asyncio.timeout(state.config.request_timeout):
                answer = await channel.receive()
        except TimeoutError:
            await channel.reset(ResetCode.TIMEOUT, "websocket accept timed out")
            return json_error(504, "upstream_timeout", "the host did not accept the WebSocket")
        if isinstance(answer, RespHead):
            # The upstream refused the upgrade: pass its answer on as a plain response.
            refused = web.Response(status=answer.status, body=answer.chunk)
            for name, value in response_headers_for_client(answer.headers):
                if name.lower() != "content-length":
                    refused.headers.add(name, value)
            return refused
        if not isinstance(answer, WsAccept):
            await channel.reset(ResetCode.INTERNAL, "unexpected answer to WsOpen")
            return json_error(502, "upstream_error", "bad answer to the WebSocket upgrade")
        ws = web.WebSocketResponse(
            protocols=[answer.protocol] if answer.protocol else (),
            autoping=True,
            max_msg_size=tunnel.peer_limits.max_frame - 1024,
        )
        await ws.prepare(request)
        await _pump(state, ws, channel)
        return ws
    except StreamError as exc:
        state.metrics.proxy_errors.add(1, {"reason": "websocket"})
        state.log.info("proxy.websocket_failed", sid=channel.sid, error=str(exc))
        return json_error(502, "upstream_error", str(exc))
    finally:
        channel.close()


async def _pump(state: RelayState, ws: web.WebSocketResponse, channel: StreamChannel) -> None:
    to_agent = asyncio.create_task(_client_to_agent(ws, channel))
    try:
        await _agent_to_client(ws, channel)
    except StreamError as exc:
        state.log.info("proxy.websocket_stream_ended", sid=channel.sid, error=str(exc))
        if not ws.closed:
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"tunnel closed")
    finally:
        if not to_agent.done():
            # Give the client's close handshake a moment to reach the agent.
            with contextlib.suppress(TimeoutError, StreamError):
                await asyncio.wait_for(asyncio.shield(to_agent), 1.0)
            to_agent.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamError):
            await to_agent


async def _client_to_agent(ws: web.WebSocketResponse, channel: StreamChannel) -> None:
    try:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await channel.send_ws(binary=False, payload=msg.data.encode())
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await channel.send_ws(binary=True, payload=msg.data)
    finally:
        code = ws.close_code if ws.close_code is not None else 1005
        if not channel.state.reset:
            with contextlib.suppress(StreamError):
                await channel.send(WsClose(channel.sid, code, ""))


async def _agent_to_client(ws: web.WebSocketResponse, channel: StreamChannel) -> None:
    while True:
        frame = await channel.receive()
        if isinstance(frame, WsMsg):
            if frame.binary:
                await ws.send_bytes(frame.payload)
            else:
                await ws.send_str(frame.payload.decode("utf-8", errors="replace"))
            await channel.consumed(len(frame.payload))
        elif isinstance(frame, WsClose):
            await ws.close(code=_closable(frame.code), message=frame.reason.encode()[:123])
            return


def _closable(code: int) -> int:
    # 1005/1006 are "no code"/"abnormal" markers that must never be sent on the wire.
    return 1000 if code in {1005, 1006} or code < 1000 else code
