"""One multiplexed stream as seen by the task that serves it (relay or agent side).

The tunnel's read loop *delivers* frames here without awaiting (a stream's buffer is bounded
by its window, so delivery never needs backpressure); the serving task *receives* them and
reports what it *consumed*, which turns into ``Window`` credit for the peer. Sending body
bytes waits for credit.

A relayed WebSocket's messages skip the task when they can: with a :attr:`writer` set
and nothing waiting in the inbox, the messages of one tunnel message are written to the
socket once that message is dispatched (:meth:`StreamChannel.flush_burst`), a loop turn
sooner than the task would, which is what a window of messages in flight waits on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from relay.errors import FlowControlError, StreamError, StreamReset, StreamStateError
from relay.wire.protocol import (
    Data,
    Frame,
    ReqHead,
    Reset,
    ResetCode,
    RespHead,
    Window,
    WsAccept,
    WsClose,
    WsMsg,
    WsOpen,
    body_piece,
)
from relay.wire.streams import StreamState

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.wire.ws_batch import BatchWriter

__all__ = ["FrameSink", "StreamChannel"]

# Frames may wait unread up to one per this many bytes of the stream's window: credit
# counts payload bytes only, so empty or tiny messages would queue without bound (each
# costs ~100 bytes here) for a consumer that stopped reading.
_BYTES_PER_WAITING_FRAME = 64


class FrameSink(Protocol):
    """Where a channel sends its frames: the tunnel connection."""

    async def send(self, frame: Frame) -> None:
        """Send one frame on the tunnel."""

    def queue(self, frame: Frame) -> None:
        """Queue one small frame on the tunnel without waiting."""

    def flush_after(self, channel: StreamChannel) -> None:
        """Call ``channel.flush_burst()`` once the tunnel message being read is dispatched."""

    def widen(self, state: StreamState, granted: int) -> int:
        """Bytes by which ``state``'s window grows with a grant of ``granted`` (0: none)."""


class StreamChannel:
    """Inbox, credit and lifecycle of one stream."""

    __slots__ = (
        "_burst",
        "_credit",
        "_error",
        "_inbox",
        "_loop",
        "_on_close",
        "_readable",
        "_sink",
        "max_chunk",
        "received_bytes",
        "sent_bytes",
        "sid",
        "state",
        "writer",
    )

    def __init__(
        self,
        sid: int,
        sink: FrameSink,
        *,
        send_window: int,
        recv_window: int,
        max_chunk: int,
        on_close: Callable[[int], None],
    ) -> None:
        self.sid = sid
        self.state = StreamState(sid, send_window=send_window, recv_window=recv_window)
        self.max_chunk = max_chunk
        self._sink = sink
        self._inbox: deque[Frame] = deque()
        self._readable: asyncio.Future[None] | None = None
        self._credit: asyncio.Future[None] | None = None
        self._error: StreamError | None = None
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        # Set by the WebSocket pump: where messages go straight to (see the module doc).
        self.writer: BatchWriter | None = None
        self._burst: list[WsMsg] | None = None  # this tunnel message's, for the writer
        # Body bytes and WebSocket payloads each way (the relay's byte counters).
        self.sent_bytes = 0
        self.received_bytes = 0

    # -- fed by the tunnel's read loop (never awaits) ----------------------------------

    def deliver(self, frame: Frame) -> None:
        """Accept one frame from the peer for this stream."""
        if type(frame) is Data:
            self.state.on_receive(len(frame.chunk), end=frame.end)
            self.received_bytes += len(frame.chunk)
        elif type(frame) is WsMsg:
            # A WebSocket message cannot be split, so it may overdraw a positive window
            # by up to one message (bounded by the frame limit).
            if self.state.recv_window <= 0:
                raise StreamStateError(f"stream {self.sid}: message with no credit")
            self.state.recv_window -= len(frame.payload)
            self.received_bytes += len(frame.payload)
            if self.writer is not None and not self._inbox:
                if self._burst is None:
                    self._burst = []
                    self._sink.flush_after(self)
                self._burst.append(frame)
                return
        elif type(frame) is Window:
            self.state.on_window(frame.increment)
            _wake(self._credit)
            return
        elif type(frame) is Reset:
            self.state.on_reset()
            self._error = StreamReset(frame.code, frame.reason)
            _wake(self._readable)
            _wake(self._credit)
            return
        elif type(frame) is RespHead or type(frame) is ReqHead:
            # An inline body spends credit like Data: heads cannot bypass the window.
            self.state.on_receive(len(frame.chunk), end=frame.end)
            self.received_bytes += len(frame.chunk)
        elif not isinstance(frame, WsAccept | WsClose | WsOpen):
            raise StreamStateError(f"stream {self.sid}: unexpected {type(frame).__name__}")
        self._enqueue(frame)

    def _enqueue(self, frame: Frame) -> None:
        """Put ``frame`` in the inbox for the serving task; FlowControlError past the bound."""
        # The window may have grown (StreamState.grow): the bound grows with it.
        if len(self._inbox) >= max(1024, self.state.recv_size // _BYTES_PER_WAITING_FRAME):
            raise FlowControlError(f"stream {self.sid}: {len(self._inbox)} frames wait unread")
        self._inbox.append(frame)
        _wake(self._readable)

    def flush_burst(self) -> None:
        """Write the messages delivered for the writer, and hand their credit back.

        A socket that cannot take them now (over its high-water mark, or closing) leaves
        them to the serving task, ahead of whatever came after them.
        """
        burst, self._burst = self._burst, None
        if not burst or self._error is not None:
            return
        writer = self.writer
        if writer is not None and writer.writable:
            try:
                size = writer.write(burst)
            except ConnectionResetError:
                pass  # closing after all: the task meets it too and ends the pump
            else:
                state = self.state
                grant = state.on_consumed(size)
                if grant:
                    self._sink.queue(Window(self.sid, grant + self._sink.widen(state, grant)))
                return
        # Past the inbox's frame bound by at most this one tunnel message: the next
        # frame delivered meets the bound (_enqueue) and resets the stream.
        self._inbox.extendleft(reversed(burst))
        _wake(self._readable)

    def fail(self, error: StreamError) -> None:
        """The tunnel went away: wake everyone waiting on this stream with ``error``."""
        if self._error is None:
            self._error = error
        self.state.on_reset()
        _wake(self._readable)
        _wake(self._credit)

    # -- used by the serving task -------------------------------------------------------

    async def receive(self) -> Frame:
        """Next frame from the peer; raises the stream's error once it is reset."""
        while not self._inbox:
            if self._error is not None:
                raise self._error
            self._readable = self._loop.create_future()
            try:
                await self._readable
            finally:
                self._readable = None
        return self._inbox.popleft()

    def receive_ready(self) -> Frame | None:
        """The next frame from the peer if one is already here, else None."""
        return self._inbox.popleft() if self._inbox else None

    async def receive_within(self, timeout: float) -> Frame:
        """Like :meth:`receive`, but raise TimeoutError after ``timeout`` seconds.

        A plain timer that wakes the waiter: cheaper on the hot path than
        ``asyncio.timeout``, which cancels and un-cancels the whole task.
        """
        if self._inbox:
            return self._inbox.popleft()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            _wake(self._readable)

        timer = self._loop.call_later(timeout, expire)
        try:
            while not self._inbox:
                if self._error is not None:
                    raise self._error
                if expired:
                    raise TimeoutError
                self._readable = self._loop.create_future()
                try:
                    await self._readable
                finally:
                    self._readable = None
            return self._inbox.popleft()
        finally:
            timer.cancel()

    async def consumed(self, n: int) -> None:
        """Our consumer took ``n`` bytes: hand credit back when enough has gathered."""
        state = self.state
        grant = state.on_consumed(n)
        if grant:
            await self._sink.send(Window(self.sid, grant + self._sink.widen(state, grant)))

    async def send(self, frame: Frame) -> None:
        """Send a frame that needs no credit (heads, WebSocket accept/close)."""
        if self._error is not None:
            raise self._error
        if type(frame) is ReqHead or type(frame) is RespHead:
            self.sent_bytes += len(frame.chunk)  # a small body inline
        await self._sink.send(frame)

    def send_now(self, frame: Frame) -> None:
        """Queue a small frame that needs no credit without waiting (a WebSocket's close)."""
        if self._error is not None:
            raise self._error
        self._sink.queue(frame)

    async def send_body(self, chunk: bytes, *, end: bool = False) -> None:
        """Send body bytes as ``Data`` frames, waiting for credit as needed."""
        if not chunk:
            if end:
                await self.send_end()
            return
        start = 0
        while True:
            n = await self._wait_credit(len(chunk) - start)
            piece: Any = chunk if n == len(chunk) else body_piece(chunk, start, start + n)
            start += n
            last = end and start == len(chunk)
            self.state.on_send(n, end=last)
            self.sent_bytes += n
            await self._sink.send(Data(self.sid, piece, last))
            if start == len(chunk):
                return

    async def send_end(self) -> None:
        """Half-close our direction with an empty end marker."""
        self.state.on_send(0, end=True)
        await self._sink.send(Data(self.sid, b"", end=True))

    async def send_ws(self, *, binary: bool, payload: bytes) -> None:
        """Send one WebSocket message once some credit is available."""
        if self._error is not None:
            raise self._error
        while self.state.send_window <= 0:
            await self._wait_credit(1)
        self.state.send_window -= len(payload)
        self.sent_bytes += len(payload)
        await self._sink.send(WsMsg(self.sid, binary, payload))

    async def reset(self, code: ResetCode, reason: str = "") -> None:
        """Abort the stream and tell the peer (once)."""
        if self.state.reset:
            return
        self.state.on_reset()
        self._error = StreamReset(code, reason)
        _wake(self._readable)
        _wake(self._credit)
        await self._sink.send(Reset(self.sid, int(code), reason))

    def close(self) -> None:
        """Forget the stream on the tunnel; later frames for it are ignored."""
        self._on_close(self.sid)

    async def _wait_credit(self, wanted: int) -> int:
        while True:
            if self._error is not None:
                raise self._error
            n = self.state.sendable(min(wanted, self.max_chunk))
            if n > 0:
                return n
            self._credit = self._loop.create_future()
            try:
                await self._credit
            finally:
                self._credit = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
