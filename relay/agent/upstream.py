"""The agent's side of a stream: call the local service and stream its answer back."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from relay.agent.answers import error_answer
from relay.agent.http_client import UpstreamPool
from relay.errors import PeerError, StreamError, peer_errors
from relay.wire.protocol import ResetCode, RespHead, WsAccept, WsOpen
from relay.wire.ws_pump import pump_to_stream

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from relay.agent.observe import Seen
    from relay.wire.channel import StreamChannel

__all__ = ["Upstream"]


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
                # What failed is in the log line above: the client's answer names no address.
                headers, body = error_answer(
                    "upstream_unreachable", "the host's local service did not answer"
                )
                await channel.send(RespHead(channel.sid, 502, headers, body, end=True))

    async def serve_websocket(self, channel: StreamChannel, seen: Seen | None = None) -> None:
        """Open the upstream WebSocket for the WsOpen waiting in ``channel`` and pump it.

        ``seen`` (request lines, inspector) learns the answer and when the socket ended.
        """
        if seen is None:
            await self._serve_websocket(channel, None)
            return
        try:
            await self._serve_websocket(channel, seen)
        except asyncio.CancelledError:
            seen.finish("cancelled")
            raise
        except Exception as exc:
            seen.finish(f"{type(exc).__name__}: {exc}"[:200])
            raise
        seen.finish("" if seen.status else "upstream unreachable")

    async def _serve_websocket(self, channel: StreamChannel, seen: Seen | None) -> None:
        opening = await channel.receive()
        if not isinstance(opening, WsOpen):
            await channel.reset(ResetCode.INTERNAL, "stream did not start with WsOpen")
            return
        try:
            with peer_errors("upstream WebSocket"):
                ws = await self.session.ws_connect(
                    URL(self._ws_base + opening.target, encoded=True),
                    headers=CIMultiDict(opening.headers),
                    protocols=opening.protocols,
                    autoping=True,
                    max_msg_size=self._max_ws_message,
                )
        except PeerError as exc:
            refused = exc.__cause__
            if isinstance(refused, aiohttp.WSServerHandshakeError):
                headers = list((refused.headers or {}).items())
                if seen is not None:
                    seen.response(refused.status, headers)
                await channel.send(RespHead(channel.sid, refused.status, headers, end=True))
            else:
                await self._upstream_failed(channel, exc, sent_head=False)
            return
        async with ws:
            if seen is not None:
                seen.response(101, [])
            await channel.send(WsAccept(channel.sid, ws.protocol))
            await pump_to_stream(ws, channel)
