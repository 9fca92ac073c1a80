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
    │   └── TunnelClosed           the tunnel went away under the stream
    ├── PeerUnreachable            another relay machine could not be reached
    ├── LocalStreamError           our own code misused a stream (a bug, never the peer)
    ├── StartupError               the process cannot start (port in use): exit 1
    └── ConfigError                bad configuration: a clear message, exit 2

Every error carries ``close_code`` (protocol errors) or ``http_status`` (what a client of
the relay should see), so the boundary that catches it needs no table of its own.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FlowControlError",
    "FrameTooLarge",
    "LocalStreamError",
    "MalformedFrame",
    "PeerUnreachable",
    "ProtocolError",
    "RelayError",
    "StartupError",
    "StreamError",
    "StreamRefused",
    "StreamReset",
    "StreamStateError",
    "TunnelClosed",
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


class StreamReset(StreamError):
    """The stream was reset; ``reset_code`` says why (see ``protocol.ResetCode``)."""

    code = "stream_reset"

    def __init__(self, reset_code: int, reason: str = "") -> None:
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


class TunnelClosed(StreamError):
    """The tunnel closed while the stream was in use."""

    code = "tunnel_closed"


class PeerUnreachable(RelayError):
    """A peer relay machine refused or dropped the connection before anything was sent."""

    http_status = 502
    code = "peer_unreachable"


class LocalStreamError(RelayError):
    """Our side tried something the stream's state forbids; a bug, not the peer's fault."""

    code = "local_stream_error"


class StartupError(RelayError):
    """The relay cannot start in this environment (e.g. its port is taken)."""

    code = "startup_failed"


class ConfigError(RelayError):
    """Invalid configuration or command-line input."""

    code = "config_error"
