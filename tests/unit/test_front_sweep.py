"""The front's sweep: one connection's failure never ends it (and every timeout with it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import structlog
from structlog.testing import capture_logs

from relay.proxy.front import ClientConnection, FrontServer


class Counter:
    def __init__(self) -> None:
        self.added: list[dict[str, str]] = []

    def add(self, n: int, attributes: dict[str, str]) -> None:
        self.added.append(attributes)


class Transport(asyncio.Transport):
    def __init__(self, front: FrontServer, conn: ClientConnection) -> None:
        super().__init__()
        self.front, self.conn = front, conn

    def abort(self) -> None:
        self.front.connections.discard(self.conn)  # as connection_lost does


def broken(front: FrontServer) -> ClientConnection:
    """A connection whose deadline check hits a bug (an exchange that is not one)."""
    conn = ClientConnection(front)
    conn.transport = Transport(front, conn)
    conn.exchanges.append(object())  # type: ignore[arg-type]
    front.connections.add(conn)
    return conn


async def test_a_connection_whose_check_fails_is_dropped_and_the_sweep_goes_on():
    config = SimpleNamespace(
        header_timeout=0.2,
        keepalive_timeout=5.0,
        request_timeout=120.0,
        base_domain="localhost",
        dns_test_zone=None,
        route_mode="fly-replay",
    )
    errors = Counter()
    state = SimpleNamespace(
        config=config,
        metrics=SimpleNamespace(proxy_errors=errors),
        log=structlog.get_logger(),
    )
    front = FrontServer(state, handoff=lambda: None, tunnels=lambda: None)  # type: ignore[arg-type]
    first = broken(front)
    with capture_logs() as logs:
        sweep = asyncio.create_task(front._sweep())
        async with asyncio.timeout(5):
            while first in front.connections:  # sweeps every 50 ms (a quarter of 0.2 s)
                await asyncio.sleep(0.01)
            # The sweep went on: a later connection is still checked.
            second = broken(front)
            while second in front.connections:
                await asyncio.sleep(0.01)
        sweep.cancel()
    assert errors.added == [{"reason": "internal_error"}] * 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["proxy.sweep_error"] * 2
