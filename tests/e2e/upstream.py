"""A local service behind the agent, running in the test's own event loop."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from tests.e2e.harness import free_port

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(size: int) -> bytes:
    reps, rest = divmod(size, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


@dataclass
class UpstreamState:
    sse_release: asyncio.Event = field(default_factory=asyncio.Event)
    sse_last_sent: bool = False
    slow_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    ws_client_close_codes: list[int] = field(default_factory=list)
    concurrent: int = 0
    peak_concurrent: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    counted: int = 0


def build_app(state: UpstreamState) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from upstream")

    async def headers(request: web.Request) -> web.Response:
        seen = {k: v for k, v in request.headers.items()}
        state.seen_headers.append(seen)
        return web.json_response(
            {
                "headers": seen,
                "path": request.path_qs,
                "raw": request.raw_path,
                "method": request.method,
            }
        )

    async def echo(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def digest(request: web.Request) -> web.Response:
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
        return web.json_response({"sha256": h.hexdigest(), "size": n})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        sent = 0
        while sent < size:
            piece = PATTERN[: min(len(PATTERN), size - sent)]
            await resp.write(piece)
            sent += len(piece)
        await resp.write_eof()
        return resp

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await asyncio.wait_for(state.sse_release.wait(), 20)
        state.sse_last_sent = True
        await resp.write(b"data: last\n\n")
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(2000):
                await resp.write(b"tick\n" * 100)
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionError):
            state.slow_cancelled.set()
            raise
        return resp

    async def delay(request: web.Request) -> web.Response:
        state.concurrent += 1
        state.peak_concurrent = max(state.peak_concurrent, state.concurrent)
        try:
            await asyncio.sleep(float(request.query.get("s", "0.2")))
        finally:
            state.concurrent -= 1
        return web.Response(text=request.query.get("id", "ok"))

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("chat", "other"))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await sock.close(code=int(msg.data.split(":")[1]), message=b"bye")
                    break
                await sock.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sock.send_bytes(b"echo:" + msg.data)
        if sock.close_code is not None:
            state.ws_client_close_codes.append(sock.close_code)
        return sock

    async def fly_headers(request: web.Request) -> web.Response:
        # An upstream trying to steer Fly's proxy.
        return web.Response(
            text="steered?",
            headers={"fly-replay": "instance=elsewhere", "Fly-Force-Instance-Id": "x"},
        )

    async def count(request: web.Request) -> web.Response:
        # A fresh answer each time: replays must reach the service, not a cache.
        state.counted += 1
        return web.json_response({"count": state.counted, "body": (await request.read()).decode()})

    async def ws_refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websockets here")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/", hello)
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/headers", headers)
    app.router.add_post("/echo", echo)
    app.router.add_post("/digest", digest)
    app.router.add_get("/download", download)
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow", slow)
    app.router.add_get("/delay", delay)
    app.router.add_get("/ws", ws)
    app.router.add_get("/ws-refuse", ws_refuse)
    app.router.add_get("/fly-headers", fly_headers)
    app.router.add_route("*", "/count", count)
    return app


class Upstream:
    def __init__(self) -> None:
        self.state = UpstreamState()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        self.runner = web.AppRunner(build_app(self.state), handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
