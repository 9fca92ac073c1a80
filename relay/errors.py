"""Exceptions of the relay package.

::

    RelayError
    ├── ProtocolError              the tunnel peer broke the protocol: close 4004
    │   ├── MalformedFrame         bytes that do not decode to a valid frame
    │   ├── FrameTooLarge          a frame or its headers exceed the limits
    │   ├── FlowControlError       data beyond the granted window
    │   └── StreamStateError       a frame that the stream's state does not allow
    ├── StreamError                one stream failed; the tunnel lives on
    │   ├── StreamReset            the peer (or we) reset the stream
    │   ├── StreamRefused          no room for another stream on this tunnel
    │   │   └── TunnelBacklogged   its agent is not taking what is queued for it
    │   └── TunnelClosed           the tunnel went away under the stream
    ├── PeerError                  an HTTP peer (relay machine, local service) failed
    │   ├── PeerUnreachable        nothing was sent: connect refused or dropped
    │   └── PeerFailed             the exchange broke off after it began
    ├── LocalStreamError           our own code misused a stream (a bug, never the peer)
    ├── StartupError               the process cannot start (port in use): exit 1
    └── ConfigError                bad configuration: a clear message, exit 2

Every error carries ``close_code`` (protocol errors) or ``http_status`` and ``code``
(what a client of the relay should see), so the boundary that catches it needs no table
of its own. aiohttp's client errors become :class:`PeerError` at one boundary,
:func:`peer_errors`, with ``raise ... from``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import aiohttp

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "ConfigError",
    "FlowControlError",
    "FrameTooLarge",
    "LocalStreamError",
    "MalformedFrame",
    "PeerError",
    "PeerFailed",
    "PeerUnreachable",
    "ProtocolError",
    "RelayError",
    "StartupError",
    "StreamError",
    "StreamRefused",
    "StreamReset",
    "StreamStateError",
    "TunnelBacklogged",
    "TunnelClosed",
    "peer_errors",
]


class RelayError(Exception):
    """Base of every relay error."""

    http_status: int = 500
    code: str = "relay_error"


class ProtocolError(RelayError):
    """The tunnel peer broke the protocol; the tunnel is closed with 4004."""

    close_code: int = 4004
    code = "protocol_error"


class MalformedFrame(ProtocolError):
    """Bytes that do not decode to a valid frame."""

    code = "malformed_frame"


class FrameTooLarge(ProtocolError):
    """A frame or its header block exceeds the configured limits."""

    code = "frame_too_large"


class FlowControlError(ProtocolError):
    """The peer sent more than the window it was granted."""

    code = "flow_control"


class StreamStateError(ProtocolError):
    """A frame the stream's current state does not allow (e.g. data after end)."""

    code = "stream_state"


class StreamError(RelayError):
    """One stream failed; other streams and the tunnel are unaffected."""

    http_status = 502
    code = "stream_error"


_MAX_REASON = 200  # characters of a reset's reason kept


class StreamReset(StreamError):
    """The stream was reset; ``reset_code`` says why (see ``protocol.ResetCode``)."""

    code = "stream_reset"

    def __init__(self, reset_code: int, reason: str = "") -> None:
        # Often a peer's words, from a Reset frame: what reaches logs and error answers
        # is bounded (the frame limit alone would let each request log a megabyte).
        reason = reason[:_MAX_REASON]
        super().__init__(f"stream reset (code {reset_code}){': ' + reason if reason else ''}")
        self.reset_code = reset_code
        self.reason = reason


class StreamViolation(StreamReset):
    """The peer broke this stream's rules; the stream was reset, the tunnel lives."""

    code = "stream_violation"


class StreamRefused(StreamError):
    """The tunnel is at its concurrent-stream limit, or closing."""

    http_status = 503
    code = "too_many_streams"


class TunnelBacklogged(StreamRefused):
    """Too much waits to be sent to the tunnel's agent (it stopped reading, or is slow).

    A new stream's head would only add to what waits: refused until the queue drains.
    """

    code = "tunnel_backlogged"


class TunnelClosed(StreamError):
    """The tunnel closed while the stream was in use."""

    code = "tunnel_closed"


class PeerError(RelayError):
    """An HTTP peer (another relay machine, the host's local service) failed us."""

    http_status = 502
    code = "peer_error"


class PeerUnreachable(PeerError):
    """The peer refused or dropped the connection before anything was sent."""

    code = "peer_unreachable"


class PeerFailed(PeerError):
    """The exchange with the peer broke off after it began (it may have seen the request)."""

    code = "peer_failed"


class peer_errors:  # noqa: N801 - reads as the function-like context manager it is
    """Translate aiohttp's client errors (and timeouts, socket errors) into :class:`PeerError`.

    ``with peer_errors("forward to m2"):`` around a client call: a failed connect becomes
    :class:`PeerUnreachable`, anything later :class:`PeerFailed`; other errors pass.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise PeerUnreachable(f"{self.what}: cannot connect: {exc}") from exc
        if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
            raise PeerFailed(f"{self.what}: {type(exc).__name__}: {exc}") from exc


class LocalStreamError(RelayError):
    """Our side tried something the stream's state forbids; a bug, not the peer's fault."""

    code = "local_stream_error"


class StartupError(RelayError):
    """The relay cannot start in this environment (e.g. its port is taken)."""

    code = "startup_failed"


class ConfigError(RelayError):
    """Invalid configuration or command-line input."""

    code = "config_error"
