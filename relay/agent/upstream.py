"""The agent's side of a stream: call the local service and stream its answer back."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
import msgspec
from multidict import CIMultiDict
from yarl import URL

from relay.agent.http_client import UpstreamPool
from relay.errors import StreamError
from relay.wire.protocol import ResetCode, RespHead, WsAccept, WsClose, WsMsg, WsOpen

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from relay.wire.channel import StreamChannel

__all__ = ["Upstream"]

_encode = msgspec.json.Encoder().encode


class Upstream:
    """Proxies streams to one local service over pooled keep-alive connections."""

    def __init__(
        self, base_url: str, *, connections: int, max_ws_message: int, log: FilteringBoundLogger
    ) -> None:
        base = URL(base_url)
        self._base = str(base).rstrip("/")
        self._ws_base = str(base.with_scheme("wss" if base.scheme == "https" else "ws")).rstrip("/")
        self._max_ws_message = max_ws_message
        self.log = log
        # Plain HTTP streams: the pooled httptools client (relay/agent/http_client.py).
        self.pool = UpstreamPool(base_url, limit=connections, log=log)
        # WebSockets: aiohttp's client.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
            auto_decompress=False,  # bytes pass through untouched, encoding and all
            # A transparent proxy adds nothing the client did not send.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def close(self) -> None:
        """Close the connection pools."""
        await self.pool.close()
        await self.session.close()

    async def _upstream_failed(
        self, channel: StreamChannel, exc: BaseException, *, sent_head: bool
    ) -> None:
        self.log.warning("agent.upstream_error", sid=channel.sid, error=repr(exc))
        with contextlib.suppress(StreamError):
            if sent_head:
                await channel.reset(ResetCode.UPSTREAM_ERROR, f"upstream failed: {exc!r}"[:200])
            else:
                body = _encode(
                    {
                        "error": {
                            "code": "upstream_unreachable",
                            "message": f"{type(exc).__name__}: {exc}",
                        }
                    }
                )
                await channel.send(
                    RespHead(
                        channel.sid, 502, [("Content-Type", "application/json")], body, end=True
                    )
                )

    async def serve_websocket(self, channel: StreamChannel) -> None:
        """Open the upstream WebSocket for the WsOpen waiting in ``channel`` and pump it."""
        opening = await channel.receive()
        if not isinstance(opening, WsOpen):
            await channel.reset(ResetCode.INTERNAL, "stream did not start with WsOpen")
            return
        try:
            ws = await self.session.ws_connect(
                URL(self._ws_base + opening.target, encoded=True),
                headers=CIMultiDict(opening.headers),
                protocols=opening.protocols,
                autoping=True,
                max_msg_size=self._max_ws_message,
            )
        except aiohttp.WSServerHandshakeError as exc:
            refused = list((exc.headers or {}).items())
            await channel.send(RespHead(channel.sid, exc.status, refused, end=True))
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await self._upstream_failed(channel, exc, sent_head=False)
            return
        async with ws:
            await channel.send(WsAccept(channel.sid, ws.protocol))
            to_relay = asyncio.create_task(_upstream_to_relay(ws, channel))
            try:
                await _relay_to_upstream(ws, channel)
            finally:
                if not to_relay.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(to_relay), 1.0)
                    to_relay.cancel()
                with contextlib.suppress(asyncio.CancelledError, StreamError):
                    await to_relay


async def _upstream_to_relay(ws: aiohttp.ClientWebSocketResponse, channel: StreamChannel) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await channel.send_ws(binary=False, payload=msg.data.encode())
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await channel.send_ws(binary=True, payload=msg.data)
    code = ws.close_code if ws.close_code is not None else 1006
    if not channel.state.reset:
        with contextlib.suppress(StreamError):
            await channel.send(WsClose(channel.sid, code, ""))


async def _relay_to_upstream(ws: aiohttp.ClientWebSocketResponse, channel: StreamChannel) -> None:
    try:
        while True:
            frame = await channel.receive()
            if isinstance(frame, WsMsg):
                if frame.binary:
                    await ws.send_bytes(frame.payload)
                else:
                    await ws.send_str(frame.payload.decode("utf-8", errors="replace"))
                await channel.consumed(len(frame.payload))
            elif isinstance(frame, WsClose):
                code = 1000 if frame.code in {1005, 1006} or frame.code < 1000 else frame.code
                await ws.close(code=code, message=frame.reason.encode()[:123])
                return
    except StreamError:
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"tunnel closed")
