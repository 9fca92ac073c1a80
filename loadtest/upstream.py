"""A minimal local service for benchmarks: small GET, sized downloads, uploads, WS echo.

    GET  /                  12 bytes of text
    GET  /download?size=N   N bytes, streamed in 64 KiB writes (Content-Length set)
    POST /upload            reads the request body as it streams, discards it, answers
                            the byte count as text
    GET  /ws                WebSocket echo: every message is sent back as it came

python -m loadtest.upstream --port P
"""

from __future__ import annotations

import argparse

from aiohttp import WSMsgType, web

CHUNK = bytes(range(256)) * 256  # 64 KiB


async def small(_request: web.Request) -> web.Response:
    return web.Response(body=b"hello world\n", content_type="text/plain")


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    sent = 0
    while sent < size:
        piece = CHUNK[: min(len(CHUNK), size - sent)]
        await resp.write(piece)
        sent += len(piece)
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    """Consume the body chunk by chunk (never whole) and answer how many bytes came."""
    got = 0
    async for chunk in request.content.iter_any():
        got += len(chunk)
    return web.Response(text=str(got))


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", small)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws_echo)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    main()
