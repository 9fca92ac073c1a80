"""How much the front reads of a client at a time while a request body streams."""

from __future__ import annotations

from types import SimpleNamespace

import structlog

from directory.models import HostRecord
from relay.machine.tunnels import Tunnel
from relay.proxy.exchange import ClientExchange, RequestInfo
from relay.proxy.front import ClientConnection, FrontServer
from relay.wire.flow import READ_FLOOR, TUNNEL_SLACK, FlowStream
from relay.wire.protocol import Limits
from relay.wire.reading import HEAD_READ
from tests.unit.test_flow import pipe


async def test_a_body_of_tiny_chunks_is_read_no_more_than_its_stream_may_take():
    # After a read of tiny chunks the front reads a head's worth (32 KiB) at a time, to
    # keep other connections' waits short: that must not lift the stream's allowance, or
    # with an agent that grants no credit each such upload held 32 KiB, not 4.
    limits = Limits(max_frame=1 << 20, initial_window=1024)
    ws, _peer = pipe()
    host = HostRecord(id="h1", name="miser", slug="miser", token_hash="", created_at=0.0)
    tunnel = Tunnel(
        ws,
        host,
        epoch=1,
        remote_addr="127.0.0.1",
        agent_version="test",
        local_limits=limits,
        peer_limits=limits,
        log=structlog.get_logger(),
    )
    config = SimpleNamespace(
        header_timeout=5.0,
        keepalive_timeout=5.0,
        request_timeout=120.0,
        base_domain="localhost",
        dns_test_zone=None,
        route_mode="fly-replay",
    )
    state = SimpleNamespace(config=config, log=structlog.get_logger())
    front = FrontServer(state, handoff=lambda: None, tunnels=lambda: None)  # type: ignore[arg-type]
    conn = ClientConnection(front)
    info = RequestInfo(
        method="POST",
        target="/up",
        headers=[],
        wanted={},
        host="miser.localhost",
        slug="miser",
        http11=True,
        keep_alive=True,
        length=None,
        chunked=True,
        started=0.0,
    )
    exchange = ClientExchange(conn, info)
    FlowStream.__init__(exchange, tunnel, tunnel.allocate_sid())
    exchange.tunnel = tunnel
    conn.exchanges.append(exchange)
    # Its credit spent, and the tunnel's slack taken by other streams' bodies.
    exchange.send_body(bytes(1024))
    tunnel.body_held = TUNNEL_SLACK + 1
    assert exchange.read_allowance() == READ_FLOOR
    assert len(conn.get_buffer(-1)) == READ_FLOOR
    # After a read of tiny chunks (front.py _pass_body), the same.
    conn._thin_body = True
    assert len(conn.get_buffer(-1)) == READ_FLOOR
    # With room, a thin body is still read a head's worth at a time.
    tunnel.body_held = 0
    assert exchange.read_allowance() > HEAD_READ
    assert len(conn.get_buffer(-1)) == HEAD_READ
    await tunnel._stop_writer()
