"""The tunnel connection's writer and backpressure, against scripted and real WebSockets."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import aiohttp
import pytest
import structlog

from relay.errors import TunnelClosed
from relay.wire.connection import _QUEUED_COST, _SLICE, TunnelConnection
from relay.wire.flow import FlowStream
from relay.wire.protocol import Data, Frame, FrameCodec, Limits, Ping, Pong, ResetCode
from tests.unit.ws_pair import joined

if TYPE_CHECKING:
    from relay.errors import StreamError

LIMITS = Limits(max_frame=4096)


class StuckSocket:
    """A peer that sends what it is given to send and never reads: sends block forever."""

    def __init__(self, messages: list[bytes]) -> None:
        self.inbox = list(messages)
        self.received = 0
        self.sends = 0
        self.sent: list[bytes] = []
        self.closed = False
        self.close_code = None

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        self.sends += 1
        self.sent.append(data)
        await asyncio.Event().wait()  # the peer's window is shut

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        if not self.inbox:
            await asyncio.Event().wait()
        self.received += 1
        return aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, self.inbox.pop(0), None)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


def connection(ws) -> TunnelConnection:
    return TunnelConnection(ws, local_limits=LIMITS, peer_limits=LIMITS, log=structlog.get_logger())


async def test_a_peer_that_pings_and_never_reads_is_not_read_either():
    codec = FrameCodec.shared(LIMITS.max_frame, LIMITS.max_header_bytes)
    flood = [codec.message(Ping(1.0))] * 60_000  # a Pong each, ~100 bytes apiece here
    ws = StuckSocket(flood)
    conn = connection(ws)
    reader = asyncio.create_task(conn.read_loop())
    async with asyncio.timeout(10):
        # The writer took one batch and is stuck sending it; then the queue filled again
        # and the reader waits for room: it stopped reading.
        while not (ws.sends and conn._room is not None):
            await asyncio.sleep(0)
    read = ws.received
    assert read < len(flood)
    # Pong answers stay within the queue limit (plus one message's answer), counted with
    # what each costs in memory beyond its bytes.
    assert conn._out_bytes <= conn._out_limit + len(codec.encode(Pong(1.0))) + _QUEUED_COST
    for _ in range(100):
        await asyncio.sleep(0)
    assert ws.received == read
    reader.cancel()
    await conn._stop_writer()


async def test_a_message_of_pings_is_answered_once_for_its_last():
    # A message full of pings (a megabyte holds 95,000) queued a Pong each, ~100 bytes
    # apiece in memory: one answer per message is all liveness needs.
    codec = FrameCodec.shared(LIMITS.max_frame, LIMITS.max_header_bytes)
    many = codec.message(*[Ping(float(i)) for i in range(300)])
    ws = StuckSocket([many, codec.message(Ping(1000.0))])
    conn = connection(ws)
    reader = asyncio.create_task(conn.read_loop())
    async with asyncio.timeout(5):
        while not (ws.received == 2 and ws.sent):
            await asyncio.sleep(0)
    answers = [f for data in ws.sent for f in codec.decode(data)]
    if conn._out:  # what waits behind the writer's stuck send
        answers += codec.decode(codec.pack(conn._out))
    assert answers == [Pong(299.0), Pong(1000.0)]
    reader.cancel()
    await conn._stop_writer()


async def test_a_sender_waiting_for_room_is_released_when_the_writer_is_stopped_early():
    conn = connection(StuckSocket([]))
    big = Data(1, b"x" * (5 * LIMITS.max_frame))  # alone over the queue limit

    blocked = asyncio.create_task(conn.send(big))
    await asyncio.sleep(0)  # the sender queues, starts the writer, waits for room
    assert conn._writer is not None
    await conn._stop_writer()  # the writer is cancelled before its first step
    await asyncio.wait_for(blocked, 1.0)
    assert conn._writer is None


async def frames_per_message(ws, n: int) -> list[int]:
    """How many frames each of the next ``n`` messages on ``ws`` carried."""
    codec = FrameCodec.shared(LIMITS.max_frame, LIMITS.max_header_bytes)
    counts = []
    for _ in range(n):
        msg = await ws.receive(timeout=5)
        counts.append(len(codec.decode(msg.data)))
    return counts


@pytest.mark.parametrize("side", ["client", "server"])
async def test_a_quiet_tunnel_sends_at_once_and_a_busy_one_batches_the_turn(side: str):
    async with joined() as (pair, client):
        ours, peer = (client, pair.server) if side == "client" else (pair.server, client)
        conn = connection(ours)
        conn.queue(Ping(1.0))  # quiet: out now, alone, with no writer task
        assert conn._writer is None
        conn.queue(Ping(2.0))  # same turn, just after a write: these two share a message
        conn.queue(Ping(3.0))
        await asyncio.sleep(0)  # the turn ends; the write waits one turn more
        assert conn._flush_handle is not None
        conn.queue(Ping(4.0))  # what the next turn brings joins the message
        await asyncio.sleep(0)  # that turn ends: one write, by a callback, not a task
        assert conn._writer is None
        assert conn._flush_handle is None
        assert await frames_per_message(peer, 2) == [1, 3]
        await asyncio.sleep(0.005)  # quiet again (the threshold is 1 ms)
        conn.queue(Ping(5.0))
        assert await frames_per_message(peer, 1) == [1]


async def test_a_paused_socket_leaves_its_frames_to_the_writer():
    async with joined() as (pair, client):
        conn = connection(client)
        protocol = client._writer.protocol
        protocol.pause_writing()  # as when the socket's buffer is over its high mark
        conn.queue(Ping(1.0))
        assert conn._writer is not None
        protocol.resume_writing()
        assert await frames_per_message(pair.server, 1) == [1]


async def test_a_cancelled_read_loop_fails_its_streams_and_leaves_no_exception_behind():
    # read_loop is compiled (relay/hot_path.py): a compiled coroutine cancelled while it
    # awaits in an except/finally block would leave its CancelledError as the current
    # exception of everything that runs after it.
    conn = connection(StuckSocket([]))
    channel = conn.open_channel(1)
    waiting = asyncio.create_task(channel.receive())
    reader = asyncio.create_task(conn.read_loop())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    with pytest.raises(TunnelClosed):
        await asyncio.wait_for(waiting, 1.0)

    async def bystander() -> object:
        await asyncio.sleep(0)
        return sys.exc_info()[0]

    assert await asyncio.create_task(bystander()) is None
    assert sys.exc_info()[0] is None


async def test_more_than_a_message_in_one_turn_goes_to_the_writer_task():
    async with joined() as (pair, client):
        conn = connection(client)
        conn.queue(Ping(1.0))  # quiet: out at once; the next frames wait for the turn's end
        for sid in (1, 2, 3):
            conn.queue(Data(sid, b"x" * (LIMITS.max_frame // 3)))  # over one message's worth
        await asyncio.sleep(0)
        assert conn._writer is not None  # it waits for the socket between messages
        assert await frames_per_message(pair.server, 3) == [1, 2, 1]


@pytest.mark.parametrize("turns", [0, 1])
async def test_flush_writes_the_turns_frames_before_returning(turns: int):
    # close() flushes, then closes the socket: frames of the same turn (a Drain, resets)
    # must not wait for a callback that would run after the close frame, whether the
    # turn's write was still due or already waiting its turn more.
    async with joined() as (pair, client):
        conn = connection(client)
        conn.queue(Ping(1.0))
        conn.queue(Ping(2.0))
        for _ in range(turns):
            await asyncio.sleep(0)
        assert conn._flush_handle is not None
        await conn.close(1000, "bye")
        assert await frames_per_message(pair.server, 2) == [1, 1]
        assert (await pair.server.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE


async def test_a_cancelled_read_loop_on_a_closed_socket_stops_its_writer():
    ws = StuckSocket([])
    conn = connection(ws)
    conn.queue(Ping(1.0))  # not aiohttp's socket: a writer task, stuck in its send
    reader = asyncio.create_task(conn.read_loop())
    await asyncio.sleep(0)
    writer = conn._writer
    assert writer is not None
    ws.closed = True
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await asyncio.wait_for(asyncio.wait({writer}), 1.0)
    assert writer.cancelled()
    assert conn._writer is None


async def test_only_the_pong_of_our_own_last_ping_is_timed():
    conn = connection(StuckSocket([]))
    conn.on_control_frame(Pong(1.0))  # a peer's invention: no round trip of 57 years
    assert conn.rtt == 0.0
    ping = conn.ping()
    conn.on_control_frame(Pong(ping.t))
    first = conn.rtt
    assert 0.0 < first < 1.0
    conn.on_control_frame(Pong(ping.t))  # answered twice: the second is not timed
    assert conn.rtt == first
    conn.on_control_frame(Pong(conn.ping().t - 5.0))  # an answer for no ping of ours
    assert conn.rtt == first


class Timed(TunnelConnection):
    """A connection that keeps the round trips it is told of (the relay's metric)."""

    def __init__(self, ws) -> None:
        super().__init__(ws, local_limits=LIMITS, peer_limits=LIMITS, log=structlog.get_logger())
        self.round_trips: list[float] = []

    def on_round_trip(self, seconds: float) -> None:
        self.round_trips.append(seconds)


async def test_each_timed_round_trip_is_reported_once_and_the_window_rule_keeps_the_least():
    conn = Timed(StuckSocket([]))
    conn.on_control_frame(Pong(0.0))  # nothing of ours waits for an answer
    assert conn.round_trips == []
    ping = conn.ping()
    conn.on_control_frame(Pong(ping.t - 0.2))  # an answer for no ping of ours
    conn.on_control_frame(Pong(ping.t))
    conn.on_control_frame(Pong(ping.t))  # answered twice: reported once
    assert len(conn.round_trips) == 1
    assert 0.0 <= conn.round_trips[0] < 1.0
    # A slower round trip later is reported as it is; the windows keep the shortest.
    slow = conn.ping()
    conn._ping_t = slow.t - 0.25  # as if it had left 250 ms ago
    conn.on_control_frame(Pong(slow.t - 0.25))
    assert len(conn.round_trips) == 2
    assert conn.round_trips[1] >= 0.25
    assert conn.rtt == conn.round_trips[0]
    # A wall clock stepped back between Ping and Pong times nothing.
    ahead = conn.ping()
    conn._ping_t = ahead.t + 5.0
    conn.on_control_frame(Pong(ahead.t + 5.0))
    assert len(conn.round_trips) == 2


async def test_a_pong_of_zero_is_not_timed():
    # Before our first Ping and after its Pong, the t we wait for is unset: a Pong(0.0)
    # matched it and made up a round trip of 57 years (every window grew at once).
    conn = connection(StuckSocket([]))
    conn.on_control_frame(Pong(0.0))
    assert conn.rtt == 0.0
    ping = conn.ping()
    conn.on_control_frame(Pong(ping.t))
    first = conn.rtt
    conn.on_control_frame(Pong(0.0))
    assert conn.rtt == first


class Forgotten(FlowStream):
    def on_data(self, chunk: bytes, *, end: bool) -> None:
        pass

    def on_reset(self, error: StreamError) -> None:
        pass


def growing() -> tuple[TunnelConnection, int]:
    """A tunnel on which every epoch is fast (16 KiB windows, up to 64 KiB); its room."""
    limits = Limits(max_frame=4096, initial_window=16 * 1024, max_window=64 * 1024)
    conn = TunnelConnection(
        StuckSocket([]), local_limits=limits, peer_limits=limits, log=structlog.get_logger()
    )
    conn.rtt = 10.0
    return conn, conn.window_room


async def test_a_forgotten_stream_takes_no_growth():
    # A stream forgotten before its peer ended (FlowStream.close) gave its growth back;
    # credit handed back afterwards must not grow it again out of the tunnel's budget,
    # which nothing would ever give back.
    conn, room = growing()
    stream = Forgotten(conn, 1)
    stream.state.on_receive(16 * 1024)
    stream.close()
    stream.consumed(8 * 1024)  # the first epoch starts the clock
    stream.consumed(8 * 1024)  # the second, fast, would double the window
    assert stream.state.grown == 0
    assert conn.window_room == room


async def test_a_grown_stream_gives_its_growth_back_once():
    """Reset by the tunnel, then closed by its owner: the budget is back, not above."""
    conn, room = growing()
    stream = Forgotten(conn, 1)
    for _ in range(2):  # the first epoch starts the clock, the second doubles the window
        stream.state.on_receive(8 * 1024)
        stream.consumed(8 * 1024)
    assert stream.state.grown == 16 * 1024
    assert conn.window_room == room - 16 * 1024
    conn.reset_stream(stream, ResetCode.FLOW_CONTROL, "test")
    assert conn.window_room == room
    stream.consumed(8 * 1024)  # reset: no grant, no growth
    stream.close()
    conn.forget(1)
    assert conn.window_room == room


class Tally(FlowStream):
    """Counts the body bytes it is given."""

    got = 0

    def on_data(self, chunk: bytes, *, end: bool) -> None:
        self.got += len(chunk)

    def on_reset(self, error: StreamError) -> None:
        pass


async def test_a_message_of_many_frames_lets_the_loop_turn_between_slices():
    # A message of 1-byte Data frames (~140,000 in a megabyte) held the loop for a
    # quarter of a second, every other tunnel waiting, message after message.
    limits = Limits(max_frame=1 << 20)
    codec = FrameCodec.shared(limits.max_frame, limits.max_header_bytes)
    count = 3 * _SLICE + 5
    ws = StuckSocket([codec.message(*[Data(1, b"x")] * count)])
    conn = TunnelConnection(ws, local_limits=limits, peer_limits=limits, log=structlog.get_logger())
    stream = Tally(conn, 1)
    seen: list[int] = []

    def probe() -> None:
        seen.append(stream.got)
        if stream.got < count:
            asyncio.get_running_loop().call_soon(probe)

    reader = asyncio.create_task(conn.read_loop())
    asyncio.get_running_loop().call_soon(probe)
    async with asyncio.timeout(5):
        while stream.got < count:
            await asyncio.sleep(0)
    assert seen[:4] == [_SLICE, 2 * _SLICE, 3 * _SLICE, count]
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await conn._stop_writer()


async def test_the_frames_that_came_with_the_handshake_are_dispatched_in_slices_too():
    # The relay hands the tunnel what followed the agent's Hello in its message: a
    # megabyte of 1-byte Data frames there held the loop at once, as any message did.
    limits = Limits(max_frame=1 << 20)
    ws = StuckSocket([])
    conn = TunnelConnection(ws, local_limits=limits, peer_limits=limits, log=structlog.get_logger())
    stream = Tally(conn, 1)
    count = 3 * _SLICE + 5
    early: list[Frame] = [Data(1, b"x")] * count
    seen: list[int] = []

    def probe() -> None:
        seen.append(stream.got)
        if stream.got < count:
            asyncio.get_running_loop().call_soon(probe)

    reader = asyncio.create_task(conn.read_loop(early))
    asyncio.get_running_loop().call_soon(probe)
    async with asyncio.timeout(5):
        while early:  # emptied once dispatched: the caller's frame lives with the tunnel
            await asyncio.sleep(0)
    assert seen[:4] == [_SLICE, 2 * _SLICE, 3 * _SLICE, count]
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await conn._stop_writer()
