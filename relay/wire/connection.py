"""The tunnel WebSocket shared by both ends: framing, stream table, read loop, close.

Subclasses (the relay's :class:`relay.machine.tunnels.Tunnel` and the agent's session) decide what
to do with connection-level frames and with frames that open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import aiohttp
import msgspec
from mypy_extensions import mypyc_attr

from relay.errors import (
    FlowControlError,
    MalformedFrame,
    ProtocolError,
    StreamReset,
    StreamStateError,
    StreamViolation,
    TunnelClosed,
)
from relay.wire.channel import StreamChannel
from relay.wire.protocol import (
    DATA_OVERHEAD,
    HEAD_FRAMES,
    STREAM_FRAMES,
    WHOLE_CHUNK,
    CloseCode,
    Data,
    Frame,
    FrameCodec,
    Limits,
    Ping,
    Pong,
    Reset,
    ResetCode,
    WsMsg,
)
from relay.wire.ws_batch import BatchWriter

if TYPE_CHECKING:
    from collections.abc import Callable

    from structlog.typing import FilteringBoundLogger

    from relay.wire.streams import StreamState

__all__ = ["Burst", "StreamEndpoint", "TunnelConnection", "WebSocketLike"]

# Messages are cut at this size even when the peer accepts larger ones: the peer handles
# a message only once it has all of it, so smaller ones keep a bulk transfer pipelined,
# while each message costs system calls and a frame parse. Measured with
# loadtest.download (2 cores): 64 KiB messages of 64 KiB chunks 470-530 MB/s, 256 KiB of
# 128 KiB 550-680 MB/s; 1 MiB messages made transfers stop and wait.
_MESSAGE_TARGET = 256 * 1024
# What a queued frame costs beyond its encoded bytes: its objects (a struct or a Raw, the
# bytes object's header, a list slot). Counted, so that the queue's limit bounds memory
# for tiny frames too: a peer's pings (a megabyte of them is 95,000) are answered by
# pongs of 11 bytes each, which cost ~100 here.
_QUEUED_COST: Final = 96
_BODY_COST: Final = DATA_OVERHEAD + _QUEUED_COST
# New streams are refused while more than this many times the send queue's limit waits:
# body sources pause at the limit, but each stream's head goes in regardless, and a
# stream whose client left is forgotten at once while its frames still wait.
_BACKLOG = 4

#: What waits in the send queue: body frames as structs, the rest encoded (Raw).
Queued = Data | WsMsg | msgspec.Raw
# Stream windows grown to their limit that a tunnel's budget covers at once (see
# TunnelConnection.window_room).
_GROWTH_STREAMS = 4
# A tunnel that wrote nothing for this long is quiet: its next frame goes out at once
# rather than after the event-loop turn (see TunnelConnection.queue).
_QUIET = 0.001
# Frames dispatched between two turns of the event loop at most. A message of 1-byte
# Data frames (~140,000 in a megabyte) held the loop for a quarter of a second, and a
# peer sending such messages kept every other tunnel's requests waiting for seconds.
_SLICE: Final = 2048


class Burst(Protocol):
    """What writes out, once a message is dispatched, what its frames brought."""

    def flush_burst(self) -> None:
        """Write what the message's frames brought."""


class StreamEndpoint(Protocol):
    """What the tunnel's stream table holds: a task's channel or a callback stream."""

    sid: int
    state: StreamState

    def deliver(self, frame: Frame) -> None:
        """Accept one frame from the peer for this stream."""

    def fail(self, error: StreamReset | TunnelClosed) -> None:
        """The tunnel went away, or the stream broke its rules."""


class WebSocketLike(Protocol):
    """What we need of aiohttp's server and client WebSocket objects."""

    @property
    def closed(self) -> bool:
        """Whether the socket is closed."""

    @property
    def close_code(self) -> int | None:
        """The close code once closed."""

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        """Send one binary message."""

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        """Receive one message."""

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Close the socket."""


# Compiled (relay/hot_path.py); the relay's Tunnel, which is not, extends it.
@mypyc_attr(allow_interpreted_subclasses=True)
class TunnelConnection:
    """Frames over one WebSocket, with the streams multiplexed on it."""

    # Slots: a relay holds tens of thousands of these; a __dict__ would cost ~1.5 KiB each.
    __slots__ = (
        "_defer_flush",
        "_encode",
        "_flush_handle",
        "_flushes",
        "_idle",
        "_last_write",
        "_log",
        "_out",
        "_out_bytes",
        "_out_limit",
        "_out_sizes",
        "_ping_t",
        "_pong_due",
        "_room",
        "_room_callbacks",
        "_writer",
        "_writes_now",
        "body_held",
        "close_code",
        "close_reason",
        "codec",
        "last_frame_at",
        "last_pong_at",
        "local_limits",
        "loop",
        "max_chunk",
        "max_window",
        "peer_limits",
        "rtt",
        "stream_violations",
        "streams",
        "window_room",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocketLike,
        *,
        local_limits: Limits,
        peer_limits: Limits,
        log: FilteringBoundLogger,
    ) -> None:
        self.ws = ws
        self.local_limits = local_limits
        self.peer_limits = peer_limits
        self.codec = FrameCodec.shared(local_limits.max_frame, local_limits.max_header_bytes)
        self._log = log
        self.streams: dict[int, StreamEndpoint] = {}
        self.loop = asyncio.get_running_loop()
        self.last_frame_at = self.loop.time()
        self.last_pong_at = self.last_frame_at
        self.close_code: int | None = None
        self.close_reason = ""
        self.stream_violations = 0  # streams reset for breaking their rules
        self._encode = self.codec.encode
        # Body chunks up to half a message (see _MESSAGE_TARGET), inside the peer's limit.
        self.max_chunk = min(128 * 1024, peer_limits.max_frame - 1024)
        # Outgoing frames wait here until the writer task packs them into messages. The
        # writer runs only while there is something to send, and the events below are
        # made only when someone waits: an idle tunnel holds no task and no waiter (a
        # relay holds tens of thousands of idle tunnels).
        # Body frames and WebSocket messages wait as structs (their bytes are copied once,
        # into the message); other frames are encoded at once.
        self._out: list[Queued] = []
        self._out_bytes = 0
        self._out_limit = 4 * peer_limits.max_frame  # senders wait beyond this
        self._writer: asyncio.Task[None] | None = None
        # A write of this turn's frames, due at the end of the turn (see queue).
        self._flush_handle: asyncio.Handle | None = None
        self._room: asyncio.Event | None = None  # set when the writer takes the queue
        # Callback-driven streams (relay.wire.flow) paused on a full queue, resumed likewise.
        self._room_callbacks: list[Callable[[], None]] | None = None
        self._idle: asyncio.Event | None = None  # set when the last stream ends
        # Writes a quiet tunnel's frame at once (None when the socket is not aiohttp's).
        self._writes_now = BatchWriter.of(ws)
        self._last_write = 0.0
        self._flushes: list[Burst] | None = None  # see flush_after
        self._defer_flush = False  # the pending turn's write waits one turn more
        self._pong_due: float | None = None  # the t of the last Ping in the message read
        # The shortest round trip seen (our Ping to its Pong; 0.0: none yet): queueing
        # behind bulk frames only lengthens one, so the least is the path's own.
        self.rtt = 0.0
        # The t of our last Ping: only its Pong is timed. NaN while none waits: it equals
        # no t, so a peer's Pong(0.0) makes up no round trip.
        self._ping_t = math.nan
        # Receive windows grow up to max_window (StreamState.grow), by at most this
        # much across the tunnel's streams at once: what one agent's streams may hold.
        self.max_window = max(local_limits.max_window, local_limits.initial_window)
        self.window_room = _GROWTH_STREAMS * (self.max_window - local_limits.initial_window)
        # Body bytes its callback streams hold beyond the peer's credit (relay.wire.flow).
        self.body_held = 0

    @property
    def log(self) -> FilteringBoundLogger:
        """The logger of this connection."""
        return self._log

    @property
    def closed(self) -> bool:
        """Whether this connection has been closed (by either side)."""
        return self.close_code is not None or self.ws.closed

    @property
    def congested(self) -> bool:
        """More is queued than the peer should be sent at once: producers should pause."""
        return self._out_bytes > self._out_limit

    @property
    def backlogged(self) -> bool:
        """So much is queued that no new stream should add to it (its peer is not reading)."""
        return self._out_bytes > _BACKLOG * self._out_limit

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the writer takes the queue (or the tunnel closes)."""
        if self._room_callbacks is None:
            self._room_callbacks = []
        self._room_callbacks.append(callback)

    def queue(self, frame: Frame) -> None:
        """Queue one frame for the writer without waiting (small control frames).

        Raises :class:`TunnelClosed` once the tunnel is gone.
        """
        if self.close_code is not None:
            raise TunnelClosed("tunnel closed")
        if type(frame) is Data:
            self._out.append(frame)
            self._out_bytes += _chunk_size(frame) + _BODY_COST
        elif type(frame) is WsMsg:
            self._out.append(frame)
            self._out_bytes += len(frame.payload) + _BODY_COST
        else:
            raw = msgspec.Raw(self._encode(frame))
            self._out.append(raw)
            self._out_bytes += len(raw) + _QUEUED_COST
        if self._writer is None and self._flush_handle is None:
            writes_now = self._writes_now
            if writes_now is not None and writes_now.writable:
                if len(self._out) == 1:
                    now = self.loop.time()
                    if now - self._last_write > _QUIET:
                        # A quiet tunnel (a request at a time): this frame goes out now,
                        # not after the rest of the turn's work. At 500 requests/s that
                        # took ~0.05 ms off the relay's added p50 latency; under load
                        # frames keep sharing messages.
                        self._last_write = now
                        out, size, self._out, self._out_bytes = self._out, self._out_bytes, [], 0
                        self._write(writes_now, out, size)
                        return
                # Runs after the current callback: frames queued in the same event-loop
                # turn go out together, in one message, written by a plain callback (a
                # task per message cost the agent ~4 % of its CPU under load). Under load
                # it waits one turn more, so that what the sockets brought meanwhile
                # (polled between turns) joins the message: a write per loop turn was
                # 0.55 writes per relayed WebSocket message each in relay and agent,
                # 0.41 this way, with 4-15 % more messages echoed.
                self._defer_flush = True
                self._flush_handle = self.loop.call_soon(self._flush_turn)
                return
            self._writer = self.loop.create_task(self._write_loop())

    def _flush_turn(self) -> None:
        """Write the frames of the turn that just ended: one message, now, if it can be.

        Under load it first waits one loop turn more (see queue), unless a message's
        worth is queued already. More than one message's worth, or a socket over its
        high-water mark, goes to the writer task, which waits for the socket between
        messages.
        """
        full = self._out_bytes > min(self.peer_limits.max_frame, _MESSAGE_TARGET) - 8
        if self._defer_flush:
            self._defer_flush = False
            if not full:
                self._flush_handle = self.loop.call_soon(self._flush_turn)
                return
        self._flush_handle = None
        if self._writer is not None or not self._out:
            return
        writes_now = cast("BatchWriter", self._writes_now)  # only scheduled when there is one
        if full or not writes_now.writable:
            self._writer = self.loop.create_task(self._write_loop())
            return
        self._last_write = self.loop.time()
        batch, size, self._out, self._out_bytes = self._out, self._out_bytes, [], 0
        self._release_senders()
        self._write(writes_now, batch, size)

    def _write(self, writer: BatchWriter, batch: list[Queued], size: int) -> None:
        """Write ``batch`` as one message; ``size`` is what queue counted for it.

        Bulk messages go as pieces, their large chunks not copied (FrameCodec.pack_parts).
        """
        if size >= WHOLE_CHUNK:
            parts, length = self.codec.pack_parts(batch)
            writer.write_parts(parts, length)
        else:
            message = self.codec.pack(batch)
            writer.write_parts([message], len(message))

    async def send(self, frame: Frame) -> None:
        """Queue one frame for the writer; waits only when too much is queued.

        Raises :class:`TunnelClosed` once the tunnel is gone.
        """
        self.queue(frame)
        if self._out_bytes > self._out_limit:
            await self._wait_room()

    async def _wait_room(self) -> None:
        """Wait until the writer takes the queue; :class:`TunnelClosed` if it closed.

        The WebSocket's own write backpressure, passed on to whoever produces.
        """
        if self._room is None:
            self._room = asyncio.Event()
        await self._room.wait()
        if self.close_code is not None:
            raise TunnelClosed("tunnel closed")

    def _release_senders(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None
        callbacks = self._room_callbacks
        if callbacks is not None:
            self._room_callbacks = None
            for callback in callbacks:
                callback()

    async def _write_loop(self) -> None:
        """Pack queued frames into as few messages as the peer's frame limit allows.

        Ends when the queue is empty; the next :meth:`queue` starts a new writer.
        """
        limit = min(self.peer_limits.max_frame, _MESSAGE_TARGET)
        # One message per write: writing a turn's messages in one go made bulk transfers
        # bimodal (every other 200 MB download ran at ~460 MB/s instead of ~620, with
        # more CPU per MB on both sides) in interleaved A/B runs.
        self._last_write = self.loop.time()
        try:
            while self._out:
                batch, self._out, self._out_bytes = self._out, [], 0
                self._release_senders()
                start, size = 0, 0
                for i, item in enumerate(batch):
                    n = _queued_size(item)
                    if size + n > limit - 8 and i > start:
                        await self._send_message(batch[start:i], size)
                        start, size = i, 0
                    size += n
                await self._send_message(batch[start:] if start else batch, size)
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises these when the socket closes under us.
            if self.close_code is None:
                self.close_code = CloseCode.NORMAL if self.ws.closed else 1006
                self.close_reason = f"send failed: {exc}"
            # The streams those frames belonged to fail below, each with its own error.
            self.log.info("tunnel.send_failed", error=str(exc), frames_unsent=len(self._out))
            self.fail_streams(TunnelClosed(f"tunnel send failed: {exc}"))
        finally:
            self._writer = None
            self._release_senders()

    async def _send_message(self, batch: list[Queued], size: int) -> None:
        """Write one message in one system call, then wait while the buffer is over its mark.

        The frame header goes out with the payload, and the wait is for the socket's
        write buffer to drop below its high-water mark.
        """
        # aiohttp writes a message over 16 KiB as two writes, header then payload: with
        # TCP_NODELAY the peer got a packet of 4-10 bytes of its own (and maybe a
        # wake-up) for every bulk message.
        writer = self._writes_now
        if writer is None:  # a socket BatchWriter cannot write to (see BatchWriter.of)
            await self.ws.send_bytes(self.codec.pack(batch))
            return
        self._write(writer, batch, size)
        await writer.drain()

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait up to ``timeout`` until everything queued has been handed to the socket."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._defer_flush = False
            self._flush_turn()  # now, rather than after whatever comes next (a close)
        writer = self._writer
        if writer is None:
            return
        done, _ = await asyncio.wait({writer}, timeout=timeout)
        if not done:
            # A peer that stopped reading: say what never left before the socket closes.
            self.log.warning("tunnel.flush_timeout", frames_unsent=len(self._out))

    def _cancel_writes(self) -> None:
        """Cancel the pending turn's write and the writer task, without waiting."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._writer is not None:
            self._writer.cancel()

    async def _stop_writer(self) -> None:
        self._cancel_writes()
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        # A writer cancelled before its first step never ran its own cleanup.
        self._writer = None
        self._release_senders()
        if self._out:
            # The socket is gone or closing: say what never left rather than drop it quietly.
            self.log.info("tunnel.frames_unsent", frames=len(self._out), bytes=self._out_bytes)

    async def wait_idle(self) -> None:
        """Wait until no stream is open on this connection."""
        if self.streams:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    def open_channel(self, sid: int) -> StreamChannel:
        """Create the local side of stream ``sid``."""
        channel = StreamChannel(
            sid,
            self,
            send_window=self.peer_limits.initial_window,
            recv_window=self.local_limits.initial_window,
            max_chunk=self.max_chunk,
            on_close=self.forget,
        )
        self.streams[sid] = channel
        return channel

    def forget(self, sid: int) -> None:
        """Drop stream ``sid`` from the table (it ended); wakes :meth:`wait_idle`."""
        channel = self.streams.pop(sid, None)
        if channel is not None:
            self.window_room += channel.state.grown
        if not self.streams and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def read_loop(self, early: list[Frame] | None = None) -> None:
        """Read frames until the socket closes; protocol errors close the tunnel (4004).

        ``early``: frames that came in the handshake's message, handled first; the list
        is emptied then (its caller's frame lives as long as the tunnel).
        """
        # No await while an exception is being handled here, nor in a finally block: this
        # module is compiled (relay/hot_path.py says why).
        protocol_error: ProtocolError | None = None
        try:
            await self._read_frames(early)
        except ProtocolError as exc:
            protocol_error = exc
        except TunnelClosed:
            pass  # answering a ping as the tunnel closed: nothing left to do
        except BaseException:
            # Cancelled (or a bug): wake the streams, and stop the writer of a closed
            # socket without waiting for it (it cleans up after itself).
            self.fail_streams(TunnelClosed(f"tunnel closed ({self.close_code})"))
            if self.ws.closed:
                self._cancel_writes()
            raise
        if protocol_error is not None:
            self.log.warning(
                "tunnel.protocol_error", error=str(protocol_error), kind=protocol_error.code
            )
            await self.close(protocol_error.close_code, f"protocol error: {protocol_error}")
        self.fail_streams(TunnelClosed(f"tunnel closed ({self.close_code})"))
        if self.ws.closed:
            await self._stop_writer()

    async def _read_frames(self, early: list[Frame] | None) -> None:
        ws = self.ws
        decode = self.codec.decode
        loop = self.loop
        binary = aiohttp.WSMsgType.BINARY
        if early:
            many = self._dispatch_few(early)
            if many is not None:
                await self._dispatch_slices(many)
                many = None
            early.clear()
        while True:
            msg = await ws.receive()
            if msg.type is binary:
                self.last_frame_at = loop.time()
                # A call, so the frames die with its frame rather than stay in this
                # one while waiting for the next message (idle tunnels wait minutes).
                many = self._dispatch_few(decode(msg.data))
                if many is not None:
                    await self._dispatch_slices(many)
                    many = None
                if self._out_bytes > self._out_limit:
                    # Answers (pongs) pile up for a peer that does not read: stop
                    # reading it too, rather than queue without bound.
                    await self._wait_room()
            elif msg.type is aiohttp.WSMsgType.TEXT:
                raise MalformedFrame("text message on the tunnel")
            else:
                # CLOSE / CLOSING / CLOSED / ERROR: the peer or the network is done.
                if self.close_code is None:
                    self.close_code = ws.close_code or CloseCode.NORMAL
                    self.close_reason = "peer closed"
                return

    def _dispatch_few(self, frames: list[Frame]) -> list[Frame] | None:
        """Dispatch a message's frames, unless too many for one go (returned then)."""
        if len(frames) > _SLICE:
            return frames
        self._dispatch(frames)
        return None

    async def _dispatch_slices(self, frames: list[Frame]) -> None:
        """Dispatch a message of many frames a slice at a time (see _SLICE).

        The loop turns between slices; frames left once the tunnel closed are dropped.
        """
        for start in range(0, len(frames), _SLICE):
            if self.close_code is not None:
                return
            self._dispatch(frames[start : start + _SLICE])
            await asyncio.sleep(0)

    def flush_after(self, channel: Burst) -> None:
        """Call ``channel.flush_burst()`` once the message being read is dispatched."""
        if self._flushes is None:
            self._flushes = []
        self._flushes.append(channel)

    def _dispatch(self, frames: list[Frame]) -> None:
        try:
            for frame in frames:
                if type(frame) in STREAM_FRAMES:
                    self.dispatch_stream_frame(frame)
                else:
                    self.on_control_frame(frame)
            pong = self._pong_due
            if pong is not None:
                self._pong_due = None
                self.queue(Pong(pong))
        finally:
            flushes = self._flushes
            if flushes is not None:
                self._flushes = None
                for channel in flushes:
                    channel.flush_burst()

    def dispatch_stream_frame(self, frame: Any) -> None:  # noqa: ANN401 - one of STREAM_FRAMES
        """Route a stream frame to its channel, or to :meth:`on_unknown_stream`.

        A frame that breaks a stream's rules (credit, order, header limit) resets that
        stream only; the tunnel and its other streams carry on.
        """
        channel = self.streams.get(frame.sid)
        if channel is None:
            self.on_unknown_stream(frame)
            return
        if type(frame) in HEAD_FRAMES and self.codec.headers_too_large(frame):
            self.reset_stream(channel, ResetCode.TOO_LARGE, "headers exceed the limit")
            return
        try:
            channel.deliver(frame)
        except FlowControlError as exc:
            self.reset_stream(channel, ResetCode.FLOW_CONTROL, str(exc))
        except StreamStateError as exc:
            self.reset_stream(channel, ResetCode.INTERNAL, str(exc))

    def reset_stream(self, channel: StreamEndpoint, code: ResetCode, reason: str) -> None:
        """The peer broke one stream's rules: reset it both ways, tell the peer, log it."""
        self.log.warning("tunnel.stream_violation", sid=channel.sid, code=int(code), error=reason)
        self.stream_violations += 1
        self.forget(channel.sid)
        channel.fail(StreamViolation(int(code), reason))
        if self.close_code is None:
            self.queue(Reset(channel.sid, int(code), reason[:200]))

    def on_unknown_stream(self, frame: Any) -> None:  # noqa: ANN401 - one of STREAM_FRAMES
        """A frame for a stream we do not hold; subclasses decide."""
        raise ProtocolError(f"frame {type(frame).__name__} for unknown stream {frame.sid}")

    def on_control_frame(self, frame: Frame) -> None:
        """Handle Ping/Pong; subclasses extend for Hello/Welcome/Drain."""
        if type(frame) is Ping:
            # One Pong per message read (per slice of a long one, _SLICE), for its last
            # Ping: a message full of pings (a hostile peer's) must not queue an answer
            # each (~100 bytes apiece).
            self._pong_due = frame.t
        elif type(frame) is Pong:
            self.last_pong_at = self.loop.time()
            if frame.t == self._ping_t:
                # Only our own last Ping is timed: a peer cannot make up a round trip.
                rtt = time.time() - frame.t
                self._ping_t = math.nan
                if rtt >= 0.0:  # not across a step of the wall clock
                    if rtt < self.rtt or not self.rtt:
                        self.rtt = rtt
                    self.on_round_trip(rtt)
        else:
            raise ProtocolError(f"unexpected {type(frame).__name__} frame")

    def on_round_trip(self, seconds: float) -> None:
        """Our last Ping was answered ``seconds`` after it left; subclasses record it."""

    def ping(self) -> Ping:
        """A Ping whose Pong will be timed (see :attr:`rtt`), to send now."""
        t = time.time()
        self._ping_t = t
        return Ping(t)

    def widen(self, state: StreamState, granted: int) -> int:
        """Bytes by which ``state``'s window grows with a grant of ``granted``.

        See :meth:`StreamState.grow`; the tunnel's budget (:attr:`window_room`) pays.
        """
        if not self.rtt or self.window_room <= 0:
            return 0
        endpoint = self.streams.get(state.sid)
        if endpoint is None or endpoint.state is not state:
            # Forgotten (:meth:`forget` gave its growth back): nothing would repay more.
            return 0
        extra = state.grow(granted, self.loop.time(), self.rtt, self.window_room, self.max_window)
        self.window_room -= extra
        return extra

    def fail_streams(self, error: TunnelClosed) -> None:
        """Wake every stream with ``error``; the tunnel is gone."""
        for channel in list(self.streams.values()):
            channel.fail(error)

    async def close(self, code: int, reason: str) -> None:
        """Close the tunnel with ``code`` (first reason wins) and fail its streams."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.fail_streams(TunnelClosed(f"tunnel closed ({code}: {reason})"))
        # Frames already queued (a Drain, stream resets) go out before the close frame.
        await self.flush()
        await self._stop_writer()
        if not self.ws.closed:
            # Close reasons are limited to 123 bytes by RFC 6455.
            await self.ws.close(code=code, message=reason.encode()[:123])


def _queued_size(item: Queued) -> int:
    """What a queued frame adds to a message, at most (see TunnelConnection.queue)."""
    if isinstance(item, msgspec.Raw):
        return len(item)
    if type(item) is Data:
        return _chunk_size(item) + DATA_OVERHEAD
    return len(item.payload) + DATA_OVERHEAD


def _chunk_size(frame: Data) -> int:
    """The length of an outgoing Data frame's chunk, which may be a view (see body_piece)."""
    untyped: Any = frame  # compiled code would check that the chunk is bytes
    return len(untyped.chunk)
