"""The agent's side of a stream: call the local service and stream its answer back."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
import msgspec
from multidict import CIMultiDict
from yarl import URL

from relay.errors import StreamError
from relay.protocol import Data, ReqHead, ResetCode, RespHead, WsAccept, WsClose, WsMsg, WsOpen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from structlog.typing import FilteringBoundLogger

    from relay.channel import StreamChannel

__all__ = ["Upstream"]

_INLINE_RESPONSE = 64 * 1024  # small responses with a known length ride in the head frame
_NO_BODY_STATUS = frozenset({204, 304})
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
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
            auto_decompress=False,  # bytes pass through untouched, encoding and all
            # A transparent proxy adds nothing the client did not send.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self.session.close()

    async def serve_http(self, channel: StreamChannel) -> None:
        """Answer the stream whose ReqHead is waiting in ``channel``."""
        head = await channel.receive()
        if not isinstance(head, ReqHead):
            await channel.reset(ResetCode.INTERNAL, "stream did not start with ReqHead")
            return
        data: bytes | AsyncIterator[bytes] | None
        if head.end:
            data = head.chunk or None
        else:
            data = _request_body(channel, head.chunk)
        sent_head = False
        try:
            async with self.session.request(
                head.method,
                URL(self._base + head.target, encoded=True),
                headers=head.headers,
                data=data,
                allow_redirects=False,
            ) as resp:
                headers = list(resp.headers.items())
                length = resp.content_length
                if head.method == "HEAD" or resp.status in _NO_BODY_STATUS or resp.status < 200:
                    sent_head = True
                    await channel.send(RespHead(channel.sid, resp.status, headers, end=True))
                    return
                if length is not None and length <= _INLINE_RESPONSE:
                    body = await resp.read()
                    sent_head = True
                    await channel.send(RespHead(channel.sid, resp.status, headers, body, end=True))
                    return
                sent_head = True
                await channel.send(RespHead(channel.sid, resp.status, headers))
                async for chunk in resp.content.iter_any():
                    await channel.send_body(chunk)
                await channel.send_end()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await self._upstream_failed(channel, exc, sent_head=sent_head)

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


async def _request_body(channel: StreamChannel, first: bytes) -> AsyncIterator[bytes]:
    """The request body as the upstream consumes it; each chunk taken returns credit."""
    if first:
        yield first
    while True:
        frame = await channel.receive()
        if not isinstance(frame, Data):
            return
        if frame.chunk:
            yield frame.chunk
            await channel.consumed(len(frame.chunk))
        if frame.end:
            return


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
