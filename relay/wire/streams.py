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

Violations by the peer raise :class:`~relay.errors.FlowControlError` or
:class:`~relay.errors.StreamStateError` (the tunnel closes with 4004); violations by our own
code raise :class:`~relay.errors.LocalStreamError`.
"""

from __future__ import annotations

from relay.errors import FlowControlError, LocalStreamError, StreamStateError

__all__ = ["MAX_WINDOW", "StreamState"]

MAX_WINDOW = 2**31 - 1


class StreamState:
    """Flow-control and half-close bookkeeping for one stream."""

    __slots__ = (
        "_grant_threshold",
        "_initial_recv",
        "_unacked",
        "local_ended",
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
        self._initial_recv = recv_window
        self._grant_threshold = max(recv_window // 4, 1)
        self._unacked = 0  # bytes our consumer took that we have not yet granted back
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

    def on_reset(self) -> None:
        """Either side reset the stream."""
        self.reset = True
