"""A hostile agent against the relay's side of a tunnel (Hypothesis state machine).

The relay-side connection runs its real read loop over an in-memory WebSocket; the agent
side is Hypothesis, sending random frame sequences: valid, out of order, oversized, for
the wrong stream, undecodable. Whatever it sends:

* the relay's buffered bytes per stream stay within the window it granted, and its send
  queue within its own bound;
* a frame that breaks one stream's rules resets that stream only: the other streams and
  the tunnel carry on;
* only a message that breaks the tunnel's own rules (undecodable, a stream never opened)
  closes the tunnel, with 4004.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import structlog
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from directory.models import HostRecord
from relay.errors import StreamError, StreamStateError
from relay.machine.tunnels import Tunnel
from relay.wire.flow import FlowStream
from relay.wire.protocol import (
    CloseCode,
    Data,
    FrameCodec,
    Limits,
    Ping,
    ReqHead,
    Reset,
    RespHead,
    Window,
    WsMsg,
)

if TYPE_CHECKING:
    from relay.wire.connection import TunnelConnection

RELAY = Limits(max_frame=64 * 1024, max_header_bytes=1024, initial_window=32 * 1024)
AGENT = Limits(max_frame=64 * 1024, initial_window=32 * 1024)
CODEC = FrameCodec(max_frame=1 << 20, max_header_bytes=1 << 20)


class MemorySocket:
    """The relay's end of an in-memory WebSocket; the test plays the agent's end."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.closed = False
        self.close_code: int | None = None

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        self.sent.append(data)

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        return await self.inbox.get()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        self.close_code = code
        return True


class ClientSide(FlowStream):
    """A stream whose client takes bytes only when the test says so."""

    def __init__(self, conn: TunnelConnection, sid: int) -> None:
        super().__init__(conn, sid)
        self.buffered = 0
        self.head: RespHead | None = None
        self.error: StreamError | None = None

    def on_head(self, frame: ReqHead | RespHead) -> None:
        if self.head is not None or not isinstance(frame, RespHead):
            raise StreamStateError("a second head")
        self.head = frame
        self.buffered += len(frame.chunk)

    def on_data(self, chunk: bytes, *, end: bool) -> None:
        self.buffered += len(chunk)

    def on_reset(self, error: StreamError) -> None:
        self.error = error

    def drain(self, n: int) -> None:
        n = min(n, self.buffered)
        self.buffered -= n
        self.consumed(n)


# Sizes around the window (32 KiB) on purpose: that is where credit is won or lost.
sizes = st.one_of(
    st.sampled_from([0, 1, 8 * 1024, 32 * 1024 - 1, 32 * 1024, 32 * 1024 + 1, 40 * 1024]),
    st.integers(0, 40 * 1024),
)
chunks = sizes.map(lambda n: b"x" * n)
headers = st.lists(
    st.tuples(st.sampled_from(["a", "b", "set-cookie"]), st.text(max_size=400)), max_size=3
)


def frames_for(sids: st.SearchStrategy[int]) -> st.SearchStrategy:
    """Any frame an agent could send, on the given stream ids."""
    return st.one_of(
        st.builds(Data, sids, chunks, st.booleans()),
        st.builds(RespHead, sids, st.integers(100, 599), headers, chunks, st.booleans()),
        st.builds(Window, sids, st.integers(1, 2**31 - 1)),
        st.builds(Reset, sids, st.integers(0, 9)),
        st.builds(WsMsg, sids, st.booleans(), chunks),
        st.builds(Ping, st.floats(0, 1e11)),
    )


class HostileAgent(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.ws = MemorySocket()
        self.conn = self.loop.run_until_complete(self._connect())
        self.reader = self.loop.create_task(self.conn.read_loop())
        self.streams: dict[int, ClientSide] = {}
        self.next_sid = 1
        self.expect_closed = False
        self.sent = 0  # batches sent on open streams: the tunnel-closing rules wait a while

    async def _connect(self) -> Tunnel:
        host = HostRecord("h_1", "hostile", "hostile1", "0" * 64, 0.0)
        return Tunnel(
            self.ws,
            host,
            epoch=1,
            remote_addr="127.0.0.1",
            agent_version="t",
            local_limits=RELAY,
            peer_limits=AGENT,
            log=structlog.get_logger(),
        )

    def _settle(self) -> None:
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _send(self, data: bytes) -> None:
        self.ws.inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, data, None))
        self._settle()

    @precondition(lambda self: not self.expect_closed and self.next_sid <= 8)
    @rule()
    def relay_opens_a_stream(self) -> None:
        sid = self.conn.allocate_sid()
        self.next_sid = sid + 1
        self.streams[sid] = ClientSide(self.conn, sid)
        self.conn.queue(ReqHead(sid, "GET", "/", []))
        self._settle()

    @precondition(lambda self: not self.expect_closed and self.streams)
    @rule(data=st.data())
    def agent_sends(self, data: st.DataObject) -> None:
        """Frames on streams the relay opened: whatever they break, only those streams."""
        opened = st.sampled_from(sorted(self.streams))
        batch = data.draw(st.lists(frames_for(opened), min_size=1, max_size=3))
        before = {sid: s.error for sid, s in self.streams.items()}
        touched = {f.sid for f in batch if hasattr(f, "sid")}
        self.sent += 1
        message = CODEC.message(*batch)
        if len(message) > RELAY.max_frame:
            self.expect_closed = True  # the message limit is the tunnel's own rule
        self._send(message)
        if self.expect_closed:
            return
        for sid, stream in self.streams.items():
            if sid not in touched:
                assert stream.error is before[sid], f"stream {sid} hit by another's frame"

    @precondition(lambda self: not self.expect_closed and self.sent >= 10)
    @rule(sid=st.integers(13, 2**40))
    def agent_sends_on_a_stream_never_opened(self, sid: int) -> None:
        self.expect_closed = True  # the tunnel's own rules: it closes, 4004
        self._send(CODEC.message(Data(sid, b"x")))

    @precondition(lambda self: not self.expect_closed and self.sent >= 10)
    @rule(data=st.binary(min_size=1, max_size=64))
    def agent_sends_garbage(self, data: bytes) -> None:
        try:
            CODEC.decode(data)
        except Exception:  # noqa: BLE001 - any decode failure makes it garbage
            self.expect_closed = True
            self._send(data)

    @precondition(lambda self: not self.expect_closed and self.streams)
    @rule(data=st.data(), n=st.integers(0, 64 * 1024))
    def client_takes(self, data: st.DataObject, n: int) -> None:
        stream = self.streams[data.draw(st.sampled_from(sorted(self.streams)))]
        stream.drain(n)
        self._settle()

    @rule()
    def time_passes(self) -> None:
        self._settle()

    @invariant()
    def buffered_bytes_stay_within_the_window(self) -> None:
        for stream in self.streams.values():
            assert stream.buffered <= RELAY.initial_window
        assert self.conn._out_bytes <= 4 * AGENT.max_frame + 64 * 1024

    @invariant()
    def only_the_tunnels_own_rules_close_it(self) -> None:
        if self.expect_closed:
            assert self.reader.done()
            assert self.conn.close_code == CloseCode.PROTOCOL_ERROR
            assert self.ws.close_code == CloseCode.PROTOCOL_ERROR
        else:
            assert not self.reader.done()
            assert self.conn.close_code is None

    def teardown(self) -> None:
        self.reader.cancel()
        self.loop.run_until_complete(asyncio.gather(self.reader, return_exceptions=True))
        self.loop.close()


HostileAgent.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_a_hostile_agent_costs_only_its_own_streams = HostileAgent.TestCase
