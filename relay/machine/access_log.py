"""``--access-log``: one JSON line per proxied request, on stderr beside the other logs.

A line (keys in this order)::

    {"timestamp": "2026-11-26T10:00:00.123456Z", "level": "info", "event": "proxy.access",
     "machine": "m-1", "request_id": null, "host": "k3x9q2ab", "method": "GET",
     "path": "/hello", "status": 200, "duration_ms": 1.234, "request_bytes": 0,
     "response_bytes": 19, "client": "203.0.113.7"}

``request_id`` is the id of an error the relay answered itself (its ``X-Request-Id``),
else the client's own ``X-Request-Id``, else null. ``path`` leaves out the query string,
which may carry secrets. ``status`` 499: the client went away before a response.
``request_bytes``/``response_bytes`` are body bytes (WebSocket payloads for an upgrade).

Not structlog: its processor chain costs ~10 µs a call. A line is one msgspec encode of
a struct; lines gather in a buffer written out once per :data:`FLUSH_INTERVAL` (or when
it fills) in one write. With the option off nothing here runs: the machine's state holds ``None``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    import asyncio

__all__ = ["CLIENT_GONE", "FLUSH_INTERVAL", "AccessLog"]

#: The status logged for a request whose client left before any answer (nginx's 499).
CLIENT_GONE: Final = 499
#: Longest a line waits in the buffer (seconds).
FLUSH_INTERVAL: Final = 0.05
_MAX_BUFFERED: Final = 512  # lines; past this the buffer is written at once


class _Line(msgspec.Struct, array_like=False):
    timestamp: datetime
    level: str
    event: str
    machine: str
    request_id: str | None
    host: str
    method: str
    path: str
    status: int
    duration_ms: float
    request_bytes: int
    response_bytes: int
    client: str


class AccessLog:
    """Buffered JSON access-log lines of one relay machine."""

    __slots__ = ("_buffer", "_encode", "_loop", "_machine", "_out", "_timer")

    def __init__(
        self, machine_id: str, loop: asyncio.AbstractEventLoop, out: IO[bytes] | None = None
    ) -> None:
        self._machine = machine_id
        self._loop = loop
        self._out = out if out is not None else sys.stderr.buffer
        self._buffer: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._encode = msgspec.json.Encoder().encode

    def record(  # noqa: PLR0913 - one field each, called from two proxy paths
        self,
        *,
        request_id: str | None,
        host: str,
        method: str,
        target: str,
        status: int,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
        client: str,
    ) -> None:
        """Queue the line of one finished request."""
        path, _, _ = target.partition("?")
        self._buffer.append(
            self._encode(
                _Line(
                    datetime.now(UTC),
                    "info",
                    "proxy.access",
                    self._machine,
                    request_id,
                    host,
                    method,
                    path,
                    status,
                    round(seconds * 1000, 3),
                    request_bytes,
                    response_bytes,
                    client,
                )
            )
        )
        if len(self._buffer) >= _MAX_BUFFERED:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write out what is buffered (also at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        lines.append(b"")  # the last line's newline
        self._out.write(b"\n".join(lines))
        self._out.flush()
