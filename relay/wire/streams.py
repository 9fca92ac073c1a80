"""Per-stream state machine: windows, half-close, reset (pure, no I/O).

Rules (each direction of a stream is independent, as in HTTP/2):

* A direction starts ``open`` with a window of credit: the receiver's initial window.
* Sending ``n`` body bytes needs ``n`` credit; the sender stops at zero and waits for
  ``Window`` frames. Receiving more than the granted credit is a flow-control error.
* ``end`` half-closes one direction; nothing may follow it in that direction.
* ``reset`` closes both directions at once; later frames for the stream are ignored by the
  caller (they may have been in flight).
* The receiver hands credit back as its consumer takes data, in grants of at least a
  quarter window, so a steady transfer costs one ``Window`` frame per quarter window.
* The receiver may grant more than its consumer took: the window grows (:meth:`StreamState.grow`)
  while it, not the consumer, sets the pace, as it does over a long round trip.

Violations by the peer raise :class:`~relay.errors.FlowControlError` or
:class:`~relay.errors.StreamStateError` (the tunnel closes with 4004); violations by our own
code raise :class:`~relay.errors.LocalStreamError`.
"""

from __future__ import annotations

import math

from relay.errors import FlowControlError, LocalStreamError, StreamStateError

__all__ = ["MAX_WINDOW", "StreamState"]

MAX_WINDOW = 2**31 - 1


class StreamState:
    """Flow-control and half-close bookkeeping for one stream."""

    __slots__ = (
        "_epoch_bytes",
        "_epoch_start",
        "_grant_threshold",
        "_unacked",
        "grown",
        "local_ended",
        "recv_size",
        "recv_window",
        "remote_ended",
        "reset",
        "send_window",
        "sid",
    )

    def __init__(self, sid: int, *, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.send_window = send_window  # credit we hold for sending to the peer
        self.recv_window = recv_window  # credit the peer holds for sending to us
        self._grant_threshold = max(recv_window // 4, 1)
        self._unacked = 0  # bytes our consumer took that we have not yet granted back
        self.recv_size = recv_window  # the window's size: the initial one and what grow() added
        self.grown = 0  # what grow() added to the window
        # See grow(); -inf: the first epoch only starts the clock (loop.time() may be small).
        self._epoch_start = -math.inf
        self._epoch_bytes = 0
        self.local_ended = False
        self.remote_ended = False
        self.reset = False

    @property
    def closed(self) -> bool:
        """Both directions are done, or the stream was reset."""
        return self.reset or (self.local_ended and self.remote_ended)

    # -- sending ----------------------------------------------------------------------

    def sendable(self, wanted: int) -> int:
        """How many of ``wanted`` body bytes may be sent now (0: wait for credit)."""
        if self.reset or self.local_ended:
            raise LocalStreamError(f"stream {self.sid}: send after end or reset")
        return min(wanted, self.send_window)

    def on_send(self, n: int, *, end: bool = False) -> None:
        """Record that ``n`` body bytes (and maybe the end) were sent."""
        if self.reset or self.local_ended:
            raise LocalStreamError(f"stream {self.sid}: send after end or reset")
        if n > self.send_window:
            raise LocalStreamError(f"stream {self.sid}: sent {n} with {self.send_window} credit")
        self.send_window -= n
        if end:
            self.local_ended = True

    def on_window(self, increment: int) -> None:
        """The peer granted more credit."""
        if self.reset:
            return
        if self.send_window + increment > MAX_WINDOW:
            raise FlowControlError(f"stream {self.sid}: window overflow")
        self.send_window += increment

    # -- receiving --------------------------------------------------------------------

    def on_receive(self, n: int, *, end: bool = False) -> None:
        """The peer sent ``n`` body bytes (and maybe the end)."""
        if self.remote_ended:
            raise StreamStateError(f"stream {self.sid}: data after end")
        if n > self.recv_window:
            raise FlowControlError(
                f"stream {self.sid}: peer sent {n} bytes with {self.recv_window} credit"
            )
        self.recv_window -= n
        if end:
            self.remote_ended = True

    def on_consumed(self, n: int) -> int:
        """Our consumer took ``n`` bytes; returns the credit to grant now (0: none yet)."""
        if self.reset or self.remote_ended:
            return 0
        self._unacked += n
        if self._unacked < self._grant_threshold:
            return 0
        grant, self._unacked = self._unacked, 0
        self.recv_window += grant
        return grant

    def grow(self, granted: int, now: float, rtt: float, room: int, limit: int) -> int:
        """After granting ``granted`` bytes back: widen the window if it set the pace.

        The window is judged in epochs of half a window consumed (quic-go's auto-tuning
        rule): a peer that only the window holds back sends a window per round trip, so
        half of one is consumed within half a round trip, while a slow consumer takes
        longer. An epoch shorter than four round trips' worth of what it consumed
        (``rtt`` seconds per window) doubles the window, by at most ``room`` bytes (the
        tunnel's budget) and up to ``limit``; the bytes added are returned, to be granted
        with ``granted``. ``now`` is a monotonic clock in seconds; the first epoch
        only starts the clock.
        """
        self._epoch_bytes += granted
        size = self.recv_size
        consumed = self._epoch_bytes
        if consumed * 2 < size or self.reset or self.remote_ended:
            return 0
        fast = now - self._epoch_start < 4.0 * rtt * consumed / size
        self._epoch_start = now
        self._epoch_bytes = 0
        extra = min(size, limit - size, room) if fast else 0
        if extra <= 0:
            return 0
        self.recv_size = size + extra
        self.recv_window += extra
        self.grown += extra
        self._grant_threshold = max(self.recv_size // 4, 1)
        return extra

    def on_reset(self) -> None:
        """Either side reset the stream."""
        self.reset = True
