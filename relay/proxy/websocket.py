"""A client's WebSocket carried through the tunnel (relay side)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from relay.errors import StreamError
from relay.proxy.forward import origin_of
from relay.proxy.headers import (
    request_headers_for_upstream,
    response_headers_for_client,
    websocket_protocols,
)
from relay.proxy.responses import error_answer, json_error
from relay.proxy.traffic import TRAFFIC
from relay.tracing import carry_current
from relay.wire.http1 import HeaderRefused, check_fields, final_status_refused
from relay.wire.protocol import ResetCode, RespHead, WsAccept, WsOpen
from relay.wire.ws_pump import pump_to_stream

if TYPE_CHECKING:
    from relay.machine.state import RelayState
    from relay.machine.tunnels import Tunnel

__all__ = ["proxy_websocket"]


async def proxy_websocket(
    state: RelayState, request: web.Request, tunnel: Tunnel
) -> web.StreamResponse:
    """Open the upstream WebSocket through the agent, then pump messages both ways."""
    channel = tunnel.open_stream()
    try:
        origin = origin_of(state, request)
        protocols = websocket_protocols(request.headers)
        headers = request_headers_for_upstream(
            list(request.headers.items()),
            client_ip=origin.client_ip,
            proto=origin.proto,
            host=request.host,
            trust_fly_headers=state.config.trust_fly_headers,
            websocket=True,
        )
        trace = carry_current(headers, request.headers.get("traceparent", ""))
        await channel.send(WsOpen(channel.sid, request.raw_path, headers, protocols, trace))
        try:
            async with asyncio.timeout(state.config.request_timeout):
                answer = await channel.receive()
        except TimeoutError:
            await channel.reset(ResetCode.TIMEOUT, "websocket accept timed out")
            return json_error(504, "upstream_timeout", "the host did not accept the WebSocket")
        bad_status = final_status_refused(answer.status) if isinstance(answer, RespHead) else None
        if bad_status is not None:
            # Not a refusal: written as one, a 101 would tell the client it was upgraded.
            await channel.reset(ResetCode.INTERNAL, "no valid final status")
            state.metrics.proxy_errors.add(1, {"reason": "upstream_error"})
            return json_error(502, "upstream_error", bad_status)
        if isinstance(answer, RespHead):
            # The upstream refused the upgrade: pass its answer on as a plain response.
            headers = response_headers_for_client(answer.headers, keep_length=False)
            try:
                check_fields(headers)
            except HeaderRefused as exc:
                await channel.reset(ResetCode.INTERNAL, "response header refused")
                state.metrics.proxy_errors.add(1, {"reason": "upstream_error"})
                return json_error(
                    502, "upstream_error", f"bad response header from the host: {exc}"
                )
            refused = web.Response(status=answer.status, body=answer.chunk)
            for name, value in headers:
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
        request[TRAFFIC].status = ws.status
        await pump_to_stream(ws, channel)
        return ws
    except StreamError as exc:
        state.metrics.proxy_errors.add(1, {"reason": "websocket"})
        state.log.info("proxy.websocket_failed", sid=channel.sid, error=str(exc))
        return error_answer(exc, "the host's WebSocket could not be opened")
    finally:
        request[TRAFFIC].took(channel)
        channel.close()
