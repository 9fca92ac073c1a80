"""A stream channel over an in-memory sink: credit waits, grants, resets."""

from __future__ import annotations

import asyncio

import pytest

from relay.errors import StreamReset, StreamStateError
from relay.wire.channel import StreamChannel
from relay.wire.protocol import Data, Reset, ResetCode, RespHead, Window, WsMsg


class Sink:
    def __init__(self):
        self.frames = []

    async def send(self, frame):
        self.frames.append(frame)

    def widen(self, state, granted):
        return 0  # windows stay as they are here (tests/unit/test_flow.py grows them)


def make(sink, send=1024, recv=1024, max_chunk=512):
    closed = []
    ch = StreamChannel(
        1, sink, send_window=send, recv_window=recv, max_chunk=max_chunk, on_close=closed.append
    )
    return ch, closed


async def until(condition, timeout: float = 2.0) -> None:
    """Let the loop run until ``condition()`` holds (fail after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


async def test_body_is_split_by_chunk_size_and_waits_for_credit():
    sink = Sink()
    ch, _ = make(sink, send=1000, max_chunk=400)
    task = asyncio.create_task(ch.send_body(b"x" * 1500, end=True))
    await until(lambda: len(sink.frames) == 3)
    assert [len(f.chunk) for f in sink.frames] == [400, 400, 200]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()  # out of credit with 500 bytes to go
    assert len(sink.frames) == 3
    ch.deliver(Window(1, 300))
    await until(lambda: len(sink.frames) == 4)
    ch.deliver(Window(1, 300))
    await asyncio.wait_for(task, 1)
    assert sum(len(f.chunk) for f in sink.frames) == 1500
    assert sink.frames[-1].end
    assert not any(f.end for f in sink.frames[:-1])


async def test_consumer_grants_credit_back():
    sink = Sink()
    ch, _ = make(sink, recv=1024)
    ch.deliver(Data(1, b"a" * 300))
    frame = await ch.receive()
    await ch.consumed(len(frame.chunk))
    assert sink.frames == [Window(1, 300)]


async def test_reset_from_peer_wakes_a_blocked_reader_and_sender():
    sink = Sink()
    ch, _ = make(sink, send=0 + 1)
    ch.state.send_window = 0
    reader = asyncio.create_task(ch.receive())
    sender = asyncio.create_task(ch.send_body(b"zz"))
    await until(lambda: ch._readable is not None and ch._credit is not None)  # both waiting
    ch.deliver(Reset(1, int(ResetCode.CANCEL), "gone"))
    for task in (reader, sender):
        with pytest.raises(StreamReset):
            await asyncio.wait_for(task, 1)


async def test_frames_queued_before_a_reset_are_still_delivered_in_order():
    sink = Sink()
    ch, _ = make(sink)
    ch.deliver(RespHead(1, 200, []))
    ch.deliver(Data(1, b"abc"))
    ch.deliver(Reset(1, 3))
    assert isinstance(await ch.receive(), RespHead)
    assert (await ch.receive()).chunk == b"abc"
    with pytest.raises(StreamReset):
        await ch.receive()


async def test_local_reset_is_sent_once():
    sink = Sink()
    ch, _ = make(sink)
    await ch.reset(ResetCode.CANCEL)
    await ch.reset(ResetCode.CANCEL)
    assert sink.frames == [Reset(1, int(ResetCode.CANCEL), "")]


async def test_websocket_messages_may_overdraw_a_positive_window_by_one_message():
    sink = Sink()
    ch, _ = make(sink, recv=100)
    ch.deliver(WsMsg(1, True, b"x" * 150))  # allowed: window was positive
    with pytest.raises(StreamStateError):
        ch.deliver(WsMsg(1, True, b"y"))


async def test_receive_within_times_out_without_touching_the_stream():
    sink = Sink()
    ch, _ = make(sink)
    with pytest.raises(TimeoutError):
        await ch.receive_within(0.01)
    ch.deliver(RespHead(1, 204, []))
    assert (await ch.receive_within(1)).status == 204
    assert sink.frames == []


async def test_receive_within_returns_a_frame_that_arrives_in_time():
    sink = Sink()
    ch, _ = make(sink)
    asyncio.get_running_loop().call_later(0.01, ch.deliver, RespHead(1, 200, []))
    assert (await ch.receive_within(5)).status == 200


async def test_a_reset_stream_sends_no_more_websocket_messages():
    sink = Sink()
    ch, _ = make(sink, send=100)
    await ch.send_ws(binary=True, payload=b"x")
    ch.deliver(Reset(1, int(ResetCode.CANCEL), "gone"))
    with pytest.raises(StreamReset):
        await ch.send_ws(binary=True, payload=b"y")  # credit left, but the stream is gone
    assert [f.payload for f in sink.frames] == [b"x"]
