"""Callback-driven streams: the hot path's alternative to a task per stream.

A :class:`FlowStream` lives in the tunnel's stream table like a
:class:`~relay.wire.channel.StreamChannel`, but nobody awaits it: the tunnel's read loop calls
:meth:`FlowStream.deliver` and the stream reacts at once (writes to a socket, queues a
frame). Plain HTTP exchanges use it on both ends (the relay's client side, the agent's
upstream side); WebSockets and forwarding keep the task-based channel.

Flow control is the pure :class:`~relay.wire.streams.StreamState`. Outgoing body bytes beyond
the peer's credit, or while the tunnel's send queue is over its limit, wait in a small
pending list and the subclass pauses its source (:meth:`FlowStream.on_blocked`) until
:meth:`FlowStream.on_unblocked`; credit for incoming bytes is handed back by
:meth:`FlowStream.consumed` once the sink took them.

What waits is bounded per stream (:data:`SLACK`) and per tunnel (:data:`TUNNEL_SLACK`), and a
source reads no more than :meth:`FlowStream.read_allowance` at a time: a peer that grants
no credit holds a few KiB of each of its streams, not a quarter of a megabyte.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from relay.errors import StreamError, StreamReset, StreamStateError
from relay.wire.protocol import (
    Data,
    Frame,
    ReqHead,
    Reset,
    ResetCode,
    RespHead,
    Window,
    body_piece,
)
from relay.wire.streams import StreamState

if TYPE_CHECKING:
    from relay.wire.connection import TunnelConnection

__all__ = ["READ_FLOOR", "SLACK", "TUNNEL_SLACK", "FlowStream"]

#: Body bytes a stream holds beyond the peer's credit before it pauses its source.
SLACK = 256 * 1024
#: Body bytes all of a tunnel's streams hold beyond credit together: past it, a stream
#: pauses its source as soon as anything of its own waits. Without it, a peer that grants
#: no credit held SLACK and a read of every stream it was sent (~490 MiB at 1,000).
TUNNEL_SLACK = 4 * 1024 * 1024
#: The least :meth:`FlowStream.read_allowance` says: a read must be allowed some bytes.
READ_FLOOR = 4 * 1024


# Subclassed by the relay's and the agent's exchanges, and by tests (relay.hot_path).
@mypyc_attr(allow_interpreted_subclasses=True)
class FlowStream:
    """One stream served by callbacks; subclasses react to the peer's frames."""

    __slots__ = (
        "_close_when_sent",
        "_offset",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_pending_end",
        "_waiting_room",
        "conn",
        "sid",
        "state",
    )

    def __init__(self, conn: TunnelConnection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.state = StreamState(
            sid,
            send_window=conn.peer_limits.initial_window,
            recv_window=conn.local_limits.initial_window,
        )
        self._pending: deque[bytes] | None = None  # made when first needed (rare)
        self._offset = 0  # bytes of _pending[0] already sent
        self._pending_bytes = 0  # bytes waiting in _pending
        self._close_when_sent = False
        self._pending_end = False
        self._waiting_room = False
        self._paused = False  # on_blocked was called and on_unblocked not yet
        conn.streams[sid] = self

    # -- the peer's frames (from the tunnel's read loop) ---------------------------------

    def deliver(self, frame: Frame) -> None:
        """Accept one frame from the peer for this stream."""
        if type(frame) is Data:
            self.state.on_receive(len(frame.chunk), end=frame.end)
            self.on_data(frame.chunk, end=frame.end)
        elif type(frame) is Window:
            self.state.on_window(frame.increment)
            if self._pending:
                self._flush()
                self._maybe_unpause()
        elif type(frame) is Reset:
            if not self.state.reset:
                self.state.on_reset()
                self.on_reset(StreamReset(frame.code, frame.reason))
        elif type(frame) is ReqHead or type(frame) is RespHead:
            # An inline body spends credit like Data: heads cannot bypass the window.
            self.state.on_receive(len(frame.chunk), end=frame.end)
            self.on_head(frame)
        else:
            raise StreamStateError(f"stream {self.sid}: unexpected {type(frame).__name__}")

    def fail(self, error: StreamError) -> None:
        """The tunnel went away, or reset the stream for breaking its rules."""
        if not self.state.reset:
            self.state.on_reset()
            # Nothing sends what waits now; the tunnel may have forgotten the stream
            # already (TunnelConnection.reset_stream), and close() then drops nothing.
            self._drop_pending()
            self.on_reset(error)

    # -- for subclasses ------------------------------------------------------------------

    def on_head(self, frame: ReqHead | RespHead) -> None:
        """The peer's head frame arrived."""
        raise StreamStateError(f"stream {self.sid}: unexpected {type(frame).__name__}")

    def on_data(self, chunk: bytes, *, end: bool) -> None:
        """Body bytes from the peer (credit already checked)."""
        raise NotImplementedError

    def on_reset(self, error: StreamError) -> None:
        """The stream was reset by the peer, or the tunnel closed."""
        raise NotImplementedError

    def on_blocked(self) -> None:
        """Outgoing body bytes are waiting: pause the source."""

    def on_unblocked(self) -> None:
        """Everything waiting went out: resume the source."""

    # -- sending -------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue a frame that needs no credit; raises TunnelClosed once the tunnel is gone."""
        self.conn.queue(frame)

    def send_body(self, chunk: bytes, *, end: bool = False) -> bool:
        """Queue body bytes within credit; False when the source was asked to pause.

        Bytes beyond the peer's credit wait here, up to :data:`SLACK` before the source
        is paused (:meth:`on_blocked`): pausing a socket on every exhausted window makes a
        bulk transfer stop and start, while a little slack keeps it flowing. The source
        resumes (:meth:`on_unblocked`) once the wait is back under half the slack and
        the tunnel's queue has room.
        """
        if chunk:
            if self._pending is None:
                self._pending = deque()
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            self.conn.body_held += len(chunk)
        if end:
            self._pending_end = True
        self._flush()
        if not self._paused and (
            self._pending_bytes > SLACK
            or self._waiting_room
            or (self._pending_bytes and self.conn.body_held > TUNNEL_SLACK)
        ):
            self._paused = True
            self.on_blocked()
        return not self._paused

    def read_allowance(self) -> int:
        """How much the source should read now (at least :data:`READ_FLOOR`).

        The peer's credit, and the slack this stream and its tunnel have left. A read is
        the unit a source pauses at: without this, a read of a quarter of a megabyte came
        in whole, credit or not, for every stream a peer held up.
        """
        room = min(SLACK - self._pending_bytes, TUNNEL_SLACK - self.conn.body_held)
        return max(self.state.send_window + max(room, 0), READ_FLOOR)

    def consumed(self, n: int) -> None:
        """Our sink took ``n`` of the peer's bytes: hand credit back when enough gathered.

        The grant may be more than was taken: see :meth:`TunnelConnection.widen`.
        """
        state = self.state
        grant = state.on_consumed(n)
        if grant:
            conn = self.conn
            if conn.close_code is None:
                conn.queue(Window(self.sid, grant + conn.widen(state, grant)))

    def reset(self, code: ResetCode, reason: str = "") -> None:
        """Abort the stream and tell the peer (once); forgets it."""
        if not self.state.reset:
            self.state.on_reset()
            if self.conn.close_code is None:
                self.conn.queue(Reset(self.sid, int(code), reason))
        self.close()

    def close(self) -> None:
        """Forget the stream; later frames for it are ignored by the tunnel."""
        if self.conn.streams.get(self.sid) is self:
            self._drop_pending()  # nothing sends it now
            self.conn.forget(self.sid)

    def _drop_pending(self) -> None:
        """Let go of what waits for credit, and of the tunnel's count of it."""
        if self._pending:
            self._pending.clear()
            self._offset = 0
        self.conn.body_held -= self._pending_bytes
        self._pending_bytes = 0

    @property
    def blocked(self) -> bool:
        """Body bytes are waiting for credit or for room in the tunnel's queue."""
        return bool(self._pending) or self._waiting_room

    def _flush(self) -> bool:
        """Send what credit allows; True when nothing waits and the tunnel has room."""
        state = self.state
        pending = self._pending
        if state.reset:
            if pending:
                self._drop_pending()
            return True
        conn = self.conn
        max_chunk = conn.max_chunk
        while pending:
            head = pending[0]
            size = len(head) - self._offset
            n = min(size, state.send_window, max_chunk)
            if n <= 0:
                return False
            self._pending_bytes -= n
            conn.body_held -= n
            if n == size and not self._offset:
                piece: Any = pending.popleft()  # whole: no copy
            else:
                piece = body_piece(head, self._offset, self._offset + n)
                self._offset += n
                if self._offset == len(head):
                    pending.popleft()
                    self._offset = 0
            last = self._pending_end and not pending
            state.on_send(n, end=last)
            conn.queue(Data(self.sid, piece, last))
        if self._pending_end and not state.local_ended:
            state.on_send(0, end=True)
            conn.queue(Data(self.sid, b"", end=True))
        if conn.congested:
            if not self._waiting_room:
                self._waiting_room = True
                conn.when_room(self._room)
            return False
        return True

    def _room(self) -> None:
        self._waiting_room = False
        if self.state.reset:
            return
        self._flush()
        self._maybe_unpause()

    def _maybe_unpause(self) -> None:
        if self._close_when_sent and not self.blocked:
            self.close()
        if (
            self._paused
            and self._pending_bytes <= SLACK // 2
            and not self._waiting_room
            and (not self._pending_bytes or self.conn.body_held <= TUNNEL_SLACK)
        ):
            self._paused = False
            self.on_unblocked()

    def close_when_sent(self) -> None:
        """Forget the stream once what waits here went out (at once if nothing waits)."""
        if self.blocked:
            self._close_when_sent = True
        else:
            self.close()
