"""Callback streams joined through an in-memory tunnel: both ends' real read loops, no sockets.

Each end streams a body to the other through a small window while its consumer takes
bytes at its own pace; whatever the pace, every byte arrives once and in order, nothing
buffers beyond the window, and a sender pauses instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import TYPE_CHECKING

import aiohttp
import pytest
import structlog

from relay.wire.connection import TunnelConnection
from relay.wire.flow import READ_FLOOR, SLACK, TUNNEL_SLACK, FlowStream
from relay.wire.protocol import Data, Limits, ReqHead, ResetCode, RespHead, Window
from relay.wire.reading import read_pieces

if TYPE_CHECKING:
    from relay.errors import StreamError

LIMITS = Limits(max_frame=32 * 1024, initial_window=16 * 1024)


class PipeEnd:
    """One end of an in-memory WebSocket pair."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.peer: PipeEnd | None = None
        self.closed = False
        self.close_code: int | None = None

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        assert self.peer is not None
        await asyncio.sleep(0)  # a real socket's write is not instant either
        self.peer.inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, data, None))

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        return await self.inbox.get()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        self.close_code = code
        return True


def pipe() -> tuple[PipeEnd, PipeEnd]:
    a, b = PipeEnd(), PipeEnd()
    a.peer, b.peer = b, a
    return a, b


class Endpoint(FlowStream):
    """Streams ``body`` out as credit allows; takes the peer's bytes at a random pace."""

    def __init__(self, conn: TunnelConnection, sid: int, body: bytes, seed: int) -> None:
        super().__init__(conn, sid)
        self.body = body
        self.offset = 0
        self.paused = False
        self.got = hashlib.sha256()
        self.received = 0
        self.buffered = 0
        self.most_buffered = 0
        self.ended = asyncio.Event()
        self.random = random.Random(seed)

    def produce(self) -> None:
        while not self.paused and self.offset < len(self.body):
            n = self.random.randint(1, 20_000)
            piece = self.body[self.offset : self.offset + n]
            self.offset += len(piece)
            self.send_body(piece, end=self.offset >= len(self.body))

    def on_blocked(self) -> None:
        self.paused = True

    def on_unblocked(self) -> None:
        self.paused = False
        self.produce()

    def on_head(self, frame: ReqHead | RespHead) -> None:
        pass

    def on_data(self, chunk: bytes, *, end: bool) -> None:
        self.got.update(chunk)
        self.received += len(chunk)
        self.buffered += len(chunk)
        self.most_buffered = max(self.most_buffered, self.buffered)
        if end:
            self.ended.set()

    def on_reset(self, error: StreamError) -> None:
        raise AssertionError(f"stream reset: {error}")

    def take(self) -> None:
        n = min(self.buffered, self.random.randint(0, 24_000))
        self.buffered -= n
        self.consumed(n)


@pytest.mark.parametrize("seed", range(5))
async def test_bodies_cross_both_ways_intact_within_the_window(seed):
    relay_ws, agent_ws = pipe()
    log = structlog.get_logger()
    relay = TunnelConnection(relay_ws, local_limits=LIMITS, peer_limits=LIMITS, log=log)
    agent = TunnelConnection(agent_ws, local_limits=LIMITS, peer_limits=LIMITS, log=log)
    readers = [asyncio.create_task(relay.read_loop()), asyncio.create_task(agent.read_loop())]
    up = random.Random(seed).randbytes(600_000)
    down = random.Random(seed + 100).randbytes(900_000)
    ends = [Endpoint(relay, 1, up, seed), Endpoint(agent, 1, down, seed + 1)]
    for end in ends:
        end.produce()
    async with asyncio.timeout(20):
        while not all(e.ended.is_set() and not e.buffered for e in ends):
            for end in ends:
                end.take()
                assert end.buffered <= LIMITS.initial_window  # the window bounds it
            for conn in (relay, agent):
                assert conn._out_bytes <= 4 * LIMITS.max_frame + 20_000  # senders paused
            await asyncio.sleep(0)
    assert ends[1].got.digest() == hashlib.sha256(up).digest()
    assert ends[0].got.digest() == hashlib.sha256(down).digest()
    assert all(e.state.local_ended and e.state.remote_ended for e in ends)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


class SlowPipeEnd(PipeEnd):
    """A pipe end whose messages arrive ``delay`` seconds after they are sent."""

    delay = 0.0

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        assert self.peer is not None
        inbox = self.peer.inbox
        message = aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, data, None)
        asyncio.get_running_loop().call_later(self.delay, inbox.put_nowait, message)


LONG_RTT_LIMITS = Limits(max_frame=64 * 1024, initial_window=64 * 1024, max_window=1 << 20)


async def slow_pair() -> tuple[TunnelConnection, TunnelConnection, list[asyncio.Task]]:
    """Two tunnel ends over a 20 ms round trip, the receiver's (second) having timed it;
    and their read loops."""
    a, b = SlowPipeEnd(), SlowPipeEnd()
    a.peer, b.peer = b, a
    a.delay = b.delay = 0.01
    log = structlog.get_logger()
    limits = LONG_RTT_LIMITS
    sender = TunnelConnection(a, local_limits=limits, peer_limits=limits, log=log)
    receiver = TunnelConnection(b, local_limits=limits, peer_limits=limits, log=log)
    readers = [asyncio.create_task(c.read_loop()) for c in (sender, receiver)]
    receiver.queue(receiver.ping())  # its Pong times the round trip
    async with asyncio.timeout(5):
        while not receiver.rtt:
            await asyncio.sleep(0.001)
    assert 0.02 <= receiver.rtt < 0.1
    return sender, receiver, readers


async def transfer_over_a_long_round_trip(take_per_tick: int, size: int) -> tuple[int, int]:
    """Stream ``size`` bytes over a 20 ms round trip, the consumer taking ``take_per_tick``
    bytes per millisecond or so; the receiver's window at the end, and the largest."""
    sender, receiver, readers = await slow_pair()
    room = receiver.window_room
    body = random.Random(1).randbytes(size)
    out = Endpoint(sender, 1, body, 1)
    into = Endpoint(receiver, 1, b"", 2)
    out.produce()
    largest = 0
    async with asyncio.timeout(30):
        while not (into.ended.is_set() and not into.buffered):
            n = min(into.buffered, take_per_tick)
            into.buffered -= n
            into.consumed(n)
            largest = max(largest, into.state.recv_size)
            # The window bounds what the receiver holds, grown or not.
            assert into.buffered <= into.state.recv_size <= LONG_RTT_LIMITS.max_window
            await asyncio.sleep(0.001)
    assert into.got.digest() == hashlib.sha256(body).digest()
    window = into.state.recv_size
    into.close()
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert receiver.window_room == room  # a forgotten stream gives its growth back
    return window, largest


async def test_a_window_that_sets_the_pace_grows_to_its_limit():
    window, largest = await transfer_over_a_long_round_trip(1 << 30, size=4_000_000)
    assert window == largest == 1 << 20  # 64 KiB doubled four times


async def test_a_slow_consumer_keeps_the_initial_window():
    # At most 0.4 MB/s (400 bytes a millisecond): under half of a quarter of what the
    # window allows (64 KiB per 20 ms round trip, 3.3 MB/s).
    window, largest = await transfer_over_a_long_round_trip(400, size=300_000)
    assert window == largest == 64 * 1024


async def test_a_channels_window_grows_too():
    """Task-served streams (WebSockets, forwarding) grow their windows like callback ones."""
    sender, receiver, readers = await slow_pair()
    room = receiver.window_room
    out, into = sender.open_channel(1), receiver.open_channel(1)
    body = random.Random(2).randbytes(3_000_000)
    writer = asyncio.create_task(out.send_body(body, end=True))
    got = bytearray()
    async with asyncio.timeout(30):
        while True:
            frame = await into.receive()
            assert isinstance(frame, Data)
            got += frame.chunk
            await into.consumed(len(frame.chunk))
            if frame.end:
                break
    await writer
    assert got == body
    assert into.state.recv_size == LONG_RTT_LIMITS.max_window
    into.close()
    assert receiver.window_room == room
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


class Source(FlowStream):
    """A stream that only sends (what the relay's exchanges do with a request body)."""

    def on_head(self, frame: ReqHead | RespHead) -> None:
        pass

    def on_data(self, chunk: bytes, *, end: bool) -> None:
        pass

    def on_reset(self, error: StreamError) -> None:
        pass


def _held(chunk: bytes | memoryview) -> int:
    """The bytes a queued frame's chunk keeps alive: a view keeps all of what it views."""
    return len(chunk.obj) if isinstance(chunk, memoryview) else len(chunk)


async def test_odd_credit_cannot_make_queued_frames_hold_more_than_they_count():
    # A peer that grants all but the last byte of each chunk, reads that much, then
    # grants the last byte: every stream queues a 1-byte frame, and its chunk has left
    # the pending list. As a view of the chunk, that byte kept all 256 KiB alive while
    # the send queue counted 1 (its limits bound what a peer that stops reading costs).
    limits = Limits(max_frame=1 << 20, initial_window=1024)
    a, _b = pipe()
    conn = TunnelConnection(a, local_limits=limits, peer_limits=limits, log=structlog.get_logger())
    size = 256 * 1024
    streams = [Source(conn, 2 * i + 1) for i in range(8)]
    for stream in streams:
        stream.send_body(random.Random(stream.sid).randbytes(size))
        stream.deliver(Window(stream.sid, size - 1024 - 1))
    async with asyncio.timeout(5):
        while conn._out or conn._writer is not None:  # the writer takes what is queued
            await asyncio.sleep(0)
    for stream in streams:
        stream.deliver(Window(stream.sid, 1))
        assert not stream.blocked
    queued = [frame for frame in conn._out if isinstance(frame, Data)]
    assert [len(frame.chunk) for frame in queued] == [1] * len(streams)
    counted = sum(len(frame.chunk) for frame in queued)
    assert sum(_held(frame.chunk) for frame in queued) <= 4 * counted


class Reader(Source):
    """A source that reads what :meth:`FlowStream.read_allowance` says, while unpaused
    (what the relay does with a client's request body, the agent with a response)."""

    def __init__(self, conn: TunnelConnection, sid: int) -> None:
        super().__init__(conn, sid)
        self.paused = False
        self.read = 0

    def on_blocked(self) -> None:
        self.paused = True

    def on_unblocked(self) -> None:
        self.paused = False

    def pump(self, reads: int) -> None:
        for _ in range(reads):
            if self.paused:
                return
            n = self.read_allowance()
            self.read += n
            self.send_body(bytes(n))


async def test_a_peer_that_grants_no_credit_holds_little_of_each_stream():
    # Before the tunnel's slack, each stream held SLACK and a whole read (~490 MiB at
    # 1,000 streams, measured end to end). Now the first streams share TUNNEL_SLACK and
    # every stream holds at most a read floor beyond it.
    limits = Limits(max_frame=1 << 20, initial_window=1024)
    a, _b = pipe()
    conn = TunnelConnection(a, local_limits=limits, peer_limits=limits, log=structlog.get_logger())
    streams = [Reader(conn, 2 * i + 1) for i in range(200)]
    for stream in streams:
        stream.pump(reads=50)
    assert all(stream.paused for stream in streams)
    held = sum(stream._pending_bytes for stream in streams)
    assert held == conn.body_held
    assert held <= TUNNEL_SLACK + len(streams) * (SLACK // 32)
    assert max(stream._pending_bytes for stream in streams) <= SLACK + READ_FLOOR
    assert sum(stream.read for stream in streams) == held + len(streams) * 1024  # credit
    # A stream the tunnel's slack paused resumes once its own credit takes what waits.
    last = streams[-1]
    assert last._pending_bytes <= READ_FLOOR
    last.deliver(Window(last.sid, last._pending_bytes))
    assert not last.paused
    assert conn.body_held == held - (last.read - 1024)
    # What waits is let go with its stream, and the tunnel's count with it.
    for stream in streams[:100]:
        stream.reset(ResetCode.CANCEL)
    for stream in streams[100:]:
        stream.close()
    assert conn.body_held == 0
    assert all(not stream._pending for stream in streams)


async def test_the_tunnels_slack_leaves_one_bulk_stream_its_own():
    # One upload to a slow peer keeps SLACK of its own: the tunnel's bound only bites
    # when many streams wait at once.
    limits = Limits(max_frame=1 << 20, initial_window=1024)
    a, _b = pipe()
    conn = TunnelConnection(a, local_limits=limits, peer_limits=limits, log=structlog.get_logger())
    stream = Reader(conn, 1)
    stream.pump(reads=1000)
    assert SLACK < stream._pending_bytes <= SLACK + READ_FLOOR
    assert conn.body_held == stream._pending_bytes


def test_a_reads_small_pieces_are_joined_and_large_ones_pass_uncopied():
    tiny = [bytes([i]) for i in range(200)]
    assert read_pieces(tiny) == [bytes(range(200))]
    large = [b"a" * 4096, b"b" * 4096, b"c" * 100]
    passed = read_pieces(large)
    assert len(passed) == 3
    assert all(a is b for a, b in zip(passed, large, strict=True))
    one = [b"x"]
    assert read_pieces(one) is one


class Closer(Source):
    """Forgets itself when reset, as the relay's and the agent's exchanges do."""

    def on_reset(self, error: StreamError) -> None:
        self.close()


async def test_a_stream_reset_for_breaking_its_rules_lets_go_of_what_waits():
    # The tunnel forgets a stream that broke its rules before failing it: its close()
    # then found it gone and kept the tunnel's count of what waited, for good. A peer
    # doing that to a few streams held every later stream of its tunnel to its credit.
    limits = Limits(max_frame=1 << 20, initial_window=1024)
    a, _b = pipe()
    conn = TunnelConnection(a, local_limits=limits, peer_limits=limits, log=structlog.get_logger())
    stream = Closer(conn, 1)
    stream.send_body(bytes(100_000))
    assert conn.body_held == 100_000 - 1024
    conn.dispatch_stream_frame(Data(1, bytes(2048)))  # beyond the window it was granted
    assert 1 not in conn.streams
    assert conn.body_held == 0
    assert not stream._pending
    await conn._stop_writer()
