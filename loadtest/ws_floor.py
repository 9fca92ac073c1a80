"""The floor under the relay's memory per tunnel: a bare aiohttp WebSocket server.

The relay accepts tunnels with aiohttp, which keeps a request, its parsed headers, a
parser, a reader queue and a handler task for every WebSocket it holds. This server
does nothing else (uvloop, one handler that reads until the socket closes), so the RSS
it gains per socket is what any aiohttp-based tunnel costs before a single byte of ours.

    python -m loadtest.ws_floor server --port P
    python -m loadtest.ws_floor client --url ws://127.0.0.1:P/ws --sockets N

The client prints "connected N" once it holds N sockets, then holds them until killed.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web


async def _handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, autoping=True)
    await ws.prepare(request)
    async for _msg in ws:
        pass
    return ws


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/ws", _handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


async def hold(url: str, sockets: int) -> None:
    # The same client headers as an agent's upgrade (relay/agent/runner.py).
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        skip_auto_headers=("Accept", "Accept-Encoding"),
    )
    gate = asyncio.Semaphore(200)

    async def one() -> aiohttp.ClientWebSocketResponse:
        async with gate:
            return await session.ws_connect(
                url, headers={"Authorization": "Bearer rt_" + "x" * 43}, compress=0
            )

    held = await asyncio.gather(*(one() for _ in range(sockets)))
    print(f"connected {len(held)}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--sockets", type=int, default=1000)
    args = parser.parse_args()
    uvloop.run(serve(args.port) if args.role == "server" else hold(args.url, args.sockets))


if __name__ == "__main__":
    main()
