"""An aiohttp server WebSocket and client WebSocket joined over loopback, for unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Pair:
    """A server-side and a client-side aiohttp WebSocket joined over loopback."""

    def __init__(self) -> None:
        self.server: web.WebSocketResponse | None = None
        self.ready = asyncio.Event()
        self.done = asyncio.Event()

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        self.server = ws
        self.ready.set()
        await self.done.wait()
        return ws


@contextlib.asynccontextmanager
async def joined(
    *, compress: int = 0
) -> AsyncIterator[tuple[Pair, aiohttp.ClientWebSocketResponse]]:
    pair = Pair()
    app = web.Application()
    app.router.add_get("/ws", pair.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        client = await session.ws_connect(
            f"ws://127.0.0.1:{port}/ws",
            compress=compress,
            max_msg_size=1 << 20,
            # Nobody reads the server side's close: don't wait for its answer.
            timeout=aiohttp.ClientWSTimeout(ws_close=0.1),
        )
        await asyncio.wait_for(pair.ready.wait(), 5)
        try:
            yield pair, client
        finally:
            pair.done.set()
            await client.close()
            await runner.cleanup()
