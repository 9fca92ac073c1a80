"""BatchWriter against aiohttp's own WebSockets on loopback: what it writes, they read."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from packaging.requirements import Requirement
from structlog import get_logger
from structlog.testing import capture_logs

from relay.wire import ws_batch
from relay.wire.channel import StreamChannel
from relay.wire.connection import TunnelConnection
from relay.wire.protocol import Data, FrameCodec, Limits, Reset, ResetCode, Window, WsClose, WsMsg
from relay.wire.ws_batch import BatchWriter
from relay.wire.ws_pump import pump_sockets, pump_to_stream
from tests.unit.ws_pair import joined

if TYPE_CHECKING:
    from collections.abc import Callable

SIZES = (0, 1, 125, 126, 65535, 65536, 200_000)


def burst() -> list[WsMsg]:
    messages = [WsMsg(1, True, bytes(range(256)) * (n // 256) + bytes(n % 256)) for n in SIZES]
    messages.append(WsMsg(1, False, "héllo".encode()))
    messages.append(WsMsg(1, False, b"bad \xff utf-8"))  # a hostile peer's text
    return messages


def expected(message: WsMsg) -> aiohttp.WSMessage:
    if message.binary:
        return aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, message.payload, None)
    text = message.payload.decode("utf-8", errors="replace")
    return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, text, None)


async def read(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, n: int) -> list:
    return [await ws.receive(timeout=5) for _ in range(n)]


def test_the_declared_aiohttp_floor_has_what_ws_batch_imports() -> None:
    # aiohttp._websocket (websocket_mask, the writer's attributes) came in 3.11: an older
    # aiohttp that the requirement let in would stop relay serve and agent at import.
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    wanted = [
        Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    ]
    (spec,) = [r.specifier for r in wanted if r.name == "aiohttp"]
    assert not spec.contains("3.10.11")
    assert spec.contains(aiohttp.__version__)


async def test_the_installed_aiohttp_fits_both_sides() -> None:
    # If this fails after an aiohttp upgrade, relaying falls back to a write per message:
    # correct, but much slower. Adapt relay/wire/ws_batch.py.
    async with joined() as (pair, client):
        assert BatchWriter.of(pair.server) is not None
        assert BatchWriter.of(client) is not None


async def test_a_clients_masked_burst_reads_back_message_by_message() -> None:
    async with joined() as (pair, client):
        writer = BatchWriter.of(client)
        assert writer is not None
        messages = burst()
        size = writer.write(messages)
        assert size == sum(len(m.payload) for m in messages)  # as received, not as written
        await writer.drain()
        assert pair.server is not None
        got = await read(pair.server, len(messages))
        assert [(m.type, m.data) for m in got] == [
            (e.type, e.data) for e in map(expected, messages)
        ]


async def test_a_servers_bursts_read_back_in_order() -> None:
    async with joined() as (pair, client):
        writer = BatchWriter.of(pair.server)
        assert writer is not None
        messages = burst()
        writer.write(messages)
        writer.write([WsMsg(1, True, b"one"), WsMsg(1, True, b"")])
        await writer.drain()
        got = await read(client, len(messages) + 2)
        want = [*map(expected, messages)] + [
            aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, data, None) for data in (b"one", b"")
        ]
        assert [(m.type, m.data) for m in got] == [(w.type, w.data) for w in want]


async def test_masks_differ_per_frame() -> None:
    async with joined() as (pair, client):
        writer = BatchWriter.of(client)
        assert writer is not None
        sent: list[bytes] = []
        transport = writer._transport  # noqa: SLF001 - observe the bytes on the wire
        original = transport.writelines

        def spy(parts: list[bytes]) -> None:
            sent.extend(bytes(p) for p in parts)
            original(parts)

        transport.writelines = spy  # type: ignore[method-assign]
        writer.write([WsMsg(1, True, b"x" * 10)] * 4)
        keys = {header[2:6] for header in sent[0::2]}
        assert len(keys) == 4
        assert all(bytes(body) != b"x" * 10 for body in sent[1::2])


async def test_compressing_sockets_are_left_to_aiohttp_and_closed_ones_refuse() -> None:
    async with joined(compress=15) as (pair, client):
        assert BatchWriter.of(client) is None
        assert BatchWriter.of(pair.server) is None
    async with joined() as (pair, client):
        writer = BatchWriter.of(client)
        assert writer is not None
        await client.close()
        with pytest.raises(ConnectionResetError):
            writer.write([WsMsg(1, True, b"late")])
        with pytest.raises(ConnectionResetError):
            writer.write_parts([b"late"], 4)


@pytest.mark.parametrize("side", ["client", "server"])
async def test_single_messages_read_back_on_both_sides(side: str) -> None:
    async with joined() as (pair, client):
        assert pair.server is not None
        sender, receiver = (client, pair.server) if side == "client" else (pair.server, client)
        writer = BatchWriter.of(sender)
        assert writer is not None
        payloads = [bytes(range(256)) * (n // 256) + bytes(n % 256) for n in SIZES]
        for payload in payloads:
            writer.write_parts([payload], len(payload))
        await writer.drain()
        got = await read(receiver, len(payloads))
        assert [(m.type, m.data) for m in got] == [(aiohttp.WSMsgType.BINARY, p) for p in payloads]


@pytest.mark.parametrize("side", ["client", "server"])
async def test_a_message_in_parts_reads_back_whole_on_both_sides(side: str) -> None:
    # Bytes and views of them, as FrameCodec.pack_parts gives; a client's are masked
    # once joined, and the pieces themselves are left as they were.
    async with joined() as (pair, client):
        assert pair.server is not None
        sender, receiver = (client, pair.server) if side == "client" else (pair.server, client)
        writer = BatchWriter.of(sender)
        assert writer is not None
        body = bytes(range(256)) * 1024
        parts = [b"\x91", memoryview(body)[7:200_007], b"", body[:70_000], memoryview(b"end")]
        kept = [bytes(p) for p in parts]
        size = sum(len(p) for p in parts)
        writer.write_parts(parts, size)
        writer.write_parts([b"small"], 5)
        await writer.drain()
        got = await read(receiver, 2)
        assert [m.data for m in got] == [b"".join(kept), b"small"]
        assert [bytes(p) for p in parts] == kept


@pytest.mark.parametrize("side", ["client", "server"])
async def test_a_tunnels_bulk_message_is_one_transport_write(side: str) -> None:
    """Header and payload together: aiohttp's own send writes a message over 16 KiB as a
    separate 2-14 byte header (a packet and a wake-up of its own for the peer)."""
    async with joined() as (pair, client):
        assert pair.server is not None
        sender, receiver = (client, pair.server) if side == "client" else (pair.server, client)
        limits = Limits(max_frame=1 << 20)
        conn = TunnelConnection(sender, local_limits=limits, peer_limits=limits, log=get_logger())
        transport = sender._writer.transport  # noqa: SLF001 - observe the writes
        writes: list[int] = []  # bytes per transport call (writelines or write)
        original_lines, original_write = transport.writelines, transport.write
        inside = False

        def spy_lines(parts: list[bytes]) -> None:
            nonlocal inside
            writes.append(sum(len(p) for p in parts))
            inside = True  # asyncio's own writelines joins and calls write
            try:
                original_lines(parts)
            finally:
                inside = False

        def spy_write(data: bytes) -> None:
            if not inside:
                writes.append(len(data))
            original_write(data)

        transport.writelines = spy_lines  # type: ignore[method-assign]
        transport.write = spy_write  # type: ignore[method-assign]
        conn._last_write = conn.loop.time()  # noqa: SLF001 - busy: the writer task sends
        conn.queue(Data(1, b"x" * 100_000))
        await conn.flush()
        assert len(writes) == 1 and writes[0] > 100_000
        (message,) = await read(receiver, 1)
        (frame,) = FrameCodec.shared(limits.max_frame, limits.max_header_bytes).decode(message.data)
        assert frame == Data(1, b"x" * 100_000)


def test_masking_keys_never_repeat_across_refills_or_a_fork() -> None:
    pool = ws_batch._KeyPool()  # noqa: SLF001
    # Four keys a draw: 4-byte keys alone collide by chance once in ~1,000 runs of this
    # test (birthday bound); 16 bytes drawn twice would mean the pool handed them out again.
    drawn = [pool.take(16) for _ in range(800)]  # three refills
    assert len(set(drawn)) == len(drawn)
    before = pool.take(4)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its next key
        os.write(write, ws_batch._KEY_POOL.take(4) + pool.take(4))  # noqa: SLF001
        os._exit(0)
    os.close(write)
    child = os.read(read, 8)
    os.waitpid(pid, 0)
    assert child[4:] != pool.take(4)
    assert before not in (child[:4], child[4:])


class Sink:
    """The tunnel side of a channel: records what the pump sends back.

    Frames a test delivers one after another count as one tunnel message: its dispatch
    ends (and the channel's burst is flushed) once the test yields to the loop.
    """

    def __init__(self) -> None:
        self.frames: list[object] = []

    async def send(self, frame: object) -> None:
        self.frames.append(frame)

    def queue(self, frame: object) -> None:
        self.frames.append(frame)

    def flush_after(self, channel: StreamChannel) -> None:
        asyncio.get_running_loop().call_soon(channel.flush_burst)

    def widen(self, state: object, granted: int) -> int:
        return 0  # windows stay as they are here (tests/unit/test_flow.py grows them)


async def pumping(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> tuple[Sink, StreamChannel, asyncio.Task]:
    sink = Sink()
    channel = StreamChannel(
        1, sink, send_window=4096, recv_window=4096, max_chunk=4096, on_close=lambda _s: None
    )
    pump = asyncio.create_task(pump_to_stream(ws, channel))
    await asyncio.sleep(0)  # the pump has set the channel's writer
    return sink, channel, pump


async def test_a_tunnel_messages_websocket_messages_go_out_in_order_before_its_close() -> None:
    async with joined() as (pair, client):
        assert pair.server is not None
        sink, channel, pump = await pumping(pair.server)
        assert channel.writer is not None
        for i in range(3):
            channel.deliver(WsMsg(1, True, b"m%d" % i))
        channel.deliver(WsClose(1, 4000, "done"))
        got = await read(client, 4)
        assert [m.data for m in got[:3]] == [b"m0", b"m1", b"m2"]
        assert (got[3].type, got[3].data) == (aiohttp.WSMsgType.CLOSE, 4000)
        await asyncio.wait_for(pump, 5)
        assert channel.writer is None


async def test_a_socket_over_its_high_mark_leaves_the_burst_to_the_task_ahead_of_the_close() -> (
    None
):
    async with joined() as (pair, client):
        assert pair.server is not None
        sink, channel, pump = await pumping(pair.server)
        protocol = pair.server._writer.protocol  # type: ignore[union-attr]
        protocol.pause_writing()  # as when the client stops reading
        for i in range(3):
            channel.deliver(WsMsg(1, True, b"m%d" % i))
        channel.deliver(WsClose(1, 4000, "done"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not any(isinstance(f, Window) for f in sink.frames)  # no credit yet
        protocol.resume_writing()
        got = await read(client, 4)
        assert [m.data for m in got[:3]] == [b"m0", b"m1", b"m2"]
        assert (got[3].type, got[3].data) == (aiohttp.WSMsgType.CLOSE, 4000)
        await asyncio.wait_for(pump, 5)


async def test_a_message_after_the_close_never_reaches_the_socket() -> None:
    # The agent's side: aiohttp's client socket stays "open" while close() waits for the
    # pump's reading task to let go; a message sent after the close must not slip out.
    async with joined() as (pair, client):
        assert pair.server is not None
        sink, channel, pump = await pumping(client)  # type: ignore[arg-type]
        channel.deliver(WsClose(1, 4000, "done"))
        async with asyncio.timeout(5):
            while not client._closing:  # the pump is inside close(), not yet closed
                await asyncio.sleep(0)
        assert not client.closed
        channel.deliver(WsMsg(1, True, b"late"))
        got = await pair.server.receive(timeout=5)
        assert (got.type, got.data) == (aiohttp.WSMsgType.CLOSE, 4000)
        await pair.server.close()
        await asyncio.wait_for(pump, 5)


async def test_a_reset_in_the_same_tunnel_message_drops_the_burst() -> None:
    async with joined() as (pair, client):
        assert pair.server is not None
        sink, channel, pump = await pumping(pair.server)
        channel.deliver(WsMsg(1, True, b"never"))
        channel.deliver(Reset(1, int(ResetCode.CANCEL), "gone"))
        got = await client.receive(timeout=5)
        assert (got.type, got.data) == (aiohttp.WSMsgType.CLOSE, 1001)  # going away
        await asyncio.wait_for(pump, 5)


async def test_a_peers_invalid_text_is_credited_as_the_bytes_it_sent() -> None:
    # Each invalid byte becomes a 3-byte U+FFFD on the socket: crediting what was written
    # rather than what arrived would let a hostile peer grow its window without bound.
    window = 4096
    async with joined() as (pair, client):
        assert pair.server is not None
        sink = Sink()
        channel = StreamChannel(
            1,
            sink,
            send_window=window,
            recv_window=window,
            max_chunk=window,
            on_close=lambda _sid: None,
        )
        pump = asyncio.create_task(pump_to_stream(pair.server, channel))
        channel.deliver(WsMsg(1, False, b"\xff" * 2048))
        got = await client.receive(timeout=5)
        assert got.data == "\ufffd" * 2048
        channel.deliver(WsClose(1, 1000, ""))
        await asyncio.wait_for(pump, 5)
        grants = [f.increment for f in sink.frames if isinstance(f, Window)]
        assert grants == [2048]
        assert channel.state.recv_window == window


@pytest.mark.parametrize("compress", [0, 15])  # batched, and aiohttp's send per message
async def test_messages_that_arrive_after_the_socket_closed_end_the_pump_quietly(
    compress: int,
) -> None:
    # The usual race: one side closes while the other's messages are on their way. The
    # late messages are dropped; the close goes to the stream; nothing is raised (an
    # exception here is logged as a bug by the agent and resets the stream).
    async with joined(compress=compress) as (pair, client):
        assert pair.server is not None
        assert (BatchWriter.of(pair.server) is None) == bool(compress)
        sink = Sink()
        channel = StreamChannel(
            1, sink, send_window=4096, recv_window=4096, max_chunk=4096, on_close=lambda _s: None
        )
        pump = asyncio.create_task(pump_to_stream(pair.server, channel))
        await client.close()
        async with asyncio.timeout(5):
            while not any(isinstance(f, WsClose) for f in sink.frames):
                await asyncio.sleep(0.01)
        assert pair.server.closed
        channel.deliver(WsMsg(1, True, b"late"))
        await asyncio.wait_for(pump, 5)
        assert [f for f in sink.frames if isinstance(f, WsClose)] == [WsClose(1, 1000, "")]


async def test_a_cancelled_pump_ends_both_directions_and_tells_the_stream() -> None:
    # The pump is compiled (relay/hot_path.py): it never awaits while an exception is in
    # flight, so a cancel ends its socket-reading direction at once, and that direction
    # still queues the stream's close (without waiting) as it goes.
    async with joined() as (pair, client):
        assert pair.server is not None
        sink, channel, pump = await pumping(pair.server)
        pump.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pump
        assert channel.writer is None
        async with asyncio.timeout(5):
            while not any(isinstance(f, WsClose) for f in sink.frames):
                await asyncio.sleep(0)
        assert [f for f in sink.frames if isinstance(f, WsClose)] == [WsClose(1, 1006, "")]
        assert sys.exc_info()[0] is None


async def test_a_direction_that_failed_before_the_pump_was_cancelled_is_logged_not_lost() -> None:
    # A bug in the socket-reading direction leaves its task failed while the other
    # direction still waits; cancelling the pump then must not leave that error to
    # asyncio's "Task exception was never retrieved" but put it in the structured log.
    failed = asyncio.Event()

    class FailingSink(Sink):
        async def send(self, frame: object) -> None:
            failed.set()
            raise ValueError("a bug")

    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    async with joined() as (pair, client):
        assert pair.server is not None
        channel = StreamChannel(
            1,
            FailingSink(),
            send_window=4096,
            recv_window=4096,
            max_chunk=4096,
            on_close=lambda _s: None,
        )
        with capture_logs() as logs:
            pump = asyncio.create_task(pump_to_stream(pair.server, channel))
            await client.send_bytes(b"hello")
            await asyncio.wait_for(failed.wait(), 5)
            await asyncio.sleep(0.01)  # the failed direction's task finishes
            pump.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pump
            await asyncio.sleep(0)  # the abandoned task's done callback runs
        del pump
        gc.collect()
    loop.set_exception_handler(None)
    failures = [entry for entry in logs if entry["event"] == "ws_pump.direction_failed"]
    assert len(failures) == 1
    assert "a bug" in str(failures[0]["error"])
    assert unretrieved == []


class Flood:
    """A socket with ``n`` one-byte messages waiting: receive() returns without a pause
    while any is left (as aiohttp's does), then waits forever."""

    close_code = None

    def __init__(self, n: int) -> None:
        self.left = n

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        if not self.left:
            await asyncio.Event().wait()
        self.left -= 1
        return aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, b"x", None)

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        pass

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


async def test_a_flood_of_waiting_messages_lets_the_loop_turn() -> None:
    # receive() does not yield while messages wait: a client's read of 1-byte messages
    # (37,000 in 256 KiB) held the loop, other hosts' requests waiting ~50 ms each.
    sink = Sink()
    channel = StreamChannel(
        1, sink, send_window=1 << 20, recv_window=4096, max_chunk=4096, on_close=lambda _s: None
    )
    ws = Flood(2000)
    pump = asyncio.create_task(pump_to_stream(ws, channel))  # type: ignore[arg-type]
    assert await carried_before_the_loop_turns(ws, lambda: 2000 - ws.left) <= 256
    assert sum(isinstance(f, WsMsg) for f in sink.frames) >= 1999
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)


async def carried_before_the_loop_turns(flood: Flood, carried: Callable[[], int]) -> int:
    """How many of ``flood``'s messages were carried when the loop first turned with
    some carried (a probe rescheduled each turn), once all are."""
    seen: list[int] = []

    def probe() -> None:
        seen.append(carried())
        if flood.left:
            asyncio.get_running_loop().call_soon(probe)

    asyncio.get_running_loop().call_soon(probe)
    async with asyncio.timeout(5):
        while flood.left:
            await asyncio.sleep(0)
    return next(n for n in seen if n)


class FloodSocket(Flood):
    """A Flood with ``async for`` (as aiohttp's sockets have), counting what it is sent."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.sent = 0

    def __aiter__(self) -> FloodSocket:
        return self

    async def __anext__(self) -> aiohttp.WSMessage:
        return await self.receive()

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        self.sent += 1

    async def send_str(self, data: str, compress: int | None = None) -> None:
        self.sent += 1


async def test_a_flood_of_waiting_messages_lets_the_loop_turn_when_forwarded() -> None:
    # The same flood from a client whose WebSocket the relay forwards to the owner of
    # its host (route_mode "forward"): socket to socket, nothing yielded either.
    client, peer = FloodSocket(2000), FloodSocket(0)
    pump = asyncio.create_task(pump_sockets(client, peer))  # type: ignore[arg-type]
    assert await carried_before_the_loop_turns(client, lambda: peer.sent) <= 256
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)
