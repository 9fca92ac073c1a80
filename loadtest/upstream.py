"""A minimal local service for benchmarks: small GET and sized downloads.

python -m loadtest.upstream --port P
"""

from __future__ import annotations

import argparse

from aiohttp import web

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", small)
    app.router.add_get("/download", download)
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
