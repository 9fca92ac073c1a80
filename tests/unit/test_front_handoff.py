"""A client connection handed to aiohttp's side, on uvloop as the relay runs."""

from __future__ import annotations

import asyncio
import gc
import socket
from types import SimpleNamespace

import structlog
import uvloop

from relay.proxy.front import ClientConnection, FrontServer


class Handler(asyncio.Protocol):
    """Stands for aiohttp's request handler: keeps what it is given."""

    def __init__(self) -> None:
        self.got = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += data


def test_a_handed_off_connection_gets_every_byte_and_lets_its_reader_go():
    # uvloop kept a buffered protocol's bound get_buffer/buffer_updated after set_protocol,
    # and with them the ClientConnection of every tunnel for as long as it lived.
    async def main() -> tuple[bytes, int]:
        config = SimpleNamespace(
            header_timeout=5.0,
            keepalive_timeout=5.0,
            request_timeout=120.0,
            base_domain="relay.test",
            dns_test_zone=None,
            route_mode="fly-replay",
            max_header_bytes=64 * 1024,
        )
        state = SimpleNamespace(
            config=config, log=structlog.get_logger(), tunnels=SimpleNamespace(by_slug={})
        )
        handlers: list[Handler] = []

        def handler() -> Handler:
            handlers.append(Handler())
            return handlers[-1]

        front = FrontServer(state, handoff=handler, tunnels=handler)  # type: ignore[arg-type]
        await front.start("127.0.0.1", 0)
        assert front._server is not None
        port = front._server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, family=socket.AF_INET)
        writer.write(b"GET /api/machines HTTP/1.1\r\nHost: relay.test\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            while not handlers or not handlers[0].got:
                await asyncio.sleep(0.01)
            # Read now through the handler's protocol, not the buffered one.
            writer.write(b"GET /later HTTP/1.1\r\n")
            await writer.drain()
            while not handlers[0].got.endswith(b"/later HTTP/1.1\r\n"):
                await asyncio.sleep(0.01)
        gc.collect()
        held = sum(1 for o in gc.get_objects() if type(o) is ClientConnection)
        assert handlers[0].transport is not None
        handlers[0].transport.close()
        writer.close()
        await front.close()
        return handlers[0].got, held

    got, held = uvloop.run(main())
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"GET /api/machines HTTP/1.1\r\n")
    assert rest == b"GET /later HTTP/1.1\r\n"
    assert held == 0
