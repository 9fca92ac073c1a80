"""A pooled keep-alive HTTP/1.1 client for the local service, parsed by httptools.

The agent's plain HTTP streams use it instead of aiohttp's ``ClientSession``: a request
is a head written to an idle connection, the response is parsed by llhttp (the C
parser) and handed to the stream by callbacks (:class:`UpstreamUser`); no request or
response object, no task per request. WebSockets to the upstream stay on aiohttp.

Connections are reused while both sides keep them alive; at most ``limit`` are open at
once and further requests wait in order. A request that finds a reused connection closed
by the upstream before any byte of the answer came is retried once on a new connection
when its body is still at hand, as browsers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

import httptools

from relay.errors import ConfigError
from relay.wire.reading import READ_SIZE, read_buffer, read_pieces

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["UpstreamConnection", "UpstreamPool", "UpstreamUser"]


class UpstreamUser(Protocol):
    """What a connection reports to the stream it serves."""

    def on_connection(self, conn: UpstreamConnection) -> None:
        """A connection is ready for this request."""

    def upstream_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        """The response head (interim 1xx answers are skipped)."""

    def upstream_body(self, data: bytes) -> None:
        """Response body bytes (de-chunked)."""

    def upstream_end(self) -> None:
        """The response is complete."""

    def upstream_failed(self, error: Exception, *, retryable: bool) -> None:
        """The connection failed; ``retryable``: nothing of the answer came yet."""

    def upstream_writable(self) -> None:
        """The connection's write buffer drained."""

    def read_allowance(self) -> int:
        """How much of the response to read next (see ``FlowStream.read_allowance``)."""


class UpstreamPool:
    """Keep-alive connections to one local service (see the module docstring)."""

    def __init__(self, base_url: str, *, limit: int, log: FilteringBoundLogger) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"upstream must be an http(s) URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.prefix = parts.path.rstrip("/")  # a base path prefixes every target
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.limit = limit
        self.log = log
        self.open = 0
        self._idle: list[UpstreamConnection] = []
        self._waiting: deque[UpstreamUser] = deque()
        self._connecting: set[asyncio.Task[None]] = set()
        self._closed = False
        self.read_buffer = read_buffer()  # its connections read into it (see relay.wire.reading)

    def acquire(self, user: UpstreamUser) -> None:
        """Give ``user`` a connection now, or as soon as one is free."""
        idle = self._idle
        while idle:
            conn = idle.pop()  # the most recently used: least likely to be timed out
            if conn.usable:
                conn.attach(user)
                return
        if self.open < self.limit:
            self._connect_for(user)
        else:
            self._waiting.append(user)

    def cancel(self, user: UpstreamUser) -> None:
        """``user`` no longer wants a connection."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(user)

    def release(self, conn: UpstreamConnection) -> None:
        """``conn`` finished an exchange and may be reused."""
        if self._closed or not conn.usable:
            conn.close()
            return
        if self._waiting:
            conn.attach(self._waiting.popleft())
        else:
            self._idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """``conn`` closed: free its slot for whoever waits."""
        self.open -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        if self._waiting and self.open < self.limit and not self._closed:
            self._connect_for(self._waiting.popleft())

    def _connect_for(self, user: UpstreamUser) -> None:
        self.open += 1
        task = asyncio.get_running_loop().create_task(self._connect(user))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, user: UpstreamUser) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await loop.create_connection(
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            self.open -= 1
            user.upstream_failed(exc, retryable=False)
            if self._waiting and self.open < self.limit and not self._closed:
                self._connect_for(self._waiting.popleft())
            return
        conn.attach(user)

    async def close(self) -> None:
        """Close every connection; later requests are refused."""
        self._closed = True
        for task in list(self._connecting):
            task.cancel()
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
        while self._waiting:
            self._waiting.popleft().upstream_failed(
                ConnectionError("agent stopping"), retryable=False
            )


class UpstreamConnection(asyncio.BufferedProtocol):
    """One keep-alive connection to the upstream, serving one request at a time."""

    __slots__ = (
        "_body_ends_at_close",
        "_body_parts",
        "_ended_at_head",
        "_got_bytes",
        "_headers",
        "_interim",
        "_skip_body",
        "parser",
        "pool",
        "reading_paused",
        "reused",
        "transport",
        "user",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.user: UpstreamUser | None = None
        self.reused = False
        self.write_paused = False
        self.reading_paused = False
        self._headers: list[tuple[str, str]] = []
        self._got_bytes = False
        self._interim = False
        self._skip_body = False  # a HEAD response: llhttp cannot be told it has no body
        self._body_ends_at_close = False
        self._ended_at_head = False
        self._body_parts: list[bytes] = []  # of this read, handed on after it (_pass_body)

    @property
    def usable(self) -> bool:
        """Open and idle."""
        return self.transport is not None and not self.transport.is_closing() and self.user is None

    def attach(self, user: UpstreamUser) -> None:
        """Serve ``user``'s request next."""
        self.user = user
        self._got_bytes = False
        if self.reading_paused:
            # Its last user may have ended while paused for credit.
            self.resume_reading()
        user.on_connection(self)

    def expect_no_body(self) -> None:
        """The request is HEAD: the response ends with its head."""
        self._skip_body = True

    def write(self, data: bytes) -> None:
        """Write request bytes."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_reading(self) -> None:
        """Stop reading the response (the tunnel has no credit for more)."""
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the response again."""
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (the request was cancelled)."""
        self.user = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = cast("asyncio.Transport", transport)

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: D102, ARG002
        # No more than the user's stream may take: a read comes in whole, and a relay
        # that grants no credit (its client reads nothing) would hold the agent to it.
        user = self.user
        if user is not None:
            n = user.read_allowance()
            if n < READ_SIZE:
                return self.pool.read_buffer[:n]
        return self.pool.read_buffer

    def buffer_updated(self, nbytes: int) -> None:  # noqa: D102
        self._got_bytes = True
        try:
            self.parser.feed_data(self.pool.read_buffer[:nbytes])
        except httptools.HttpParserError as exc:
            user, self.user = self.user, None
            if user is not None:
                user.upstream_failed(exc, retryable=False)
            self.abort()
            return
        self._pass_body()
        if self._ended_at_head:
            # A HEAD response ended at its head; a new parser for the next response.
            keep_alive = self.parser.should_keep_alive()
            self._ended_at_head = self._skip_body = False
            self.parser = httptools.HttpResponseParser(self)
            self.reused = True
            if keep_alive:
                self.pool.release(self)
            else:
                self.close()

    def eof_received(self) -> bool | None:  # noqa: D102
        return None

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.pool.discard(self)
        user, self.user = self.user, None
        if user is None:
            return
        if self._body_ends_at_close:
            user.upstream_end()  # a body delimited by the connection's close
            return
        user.upstream_failed(
            exc or ConnectionError("upstream closed the connection"),
            retryable=self.reused and not self._got_bytes,
        )

    def pause_writing(self) -> None:  # noqa: D102
        self.write_paused = True

    def resume_writing(self) -> None:  # noqa: D102
        self.write_paused = False
        if self.user is not None:
            self.user.upstream_writable()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A response starts."""
        self._headers = []
        self._interim = False
        self._body_ends_at_close = False

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header of the response."""
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        """The response head is complete."""
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue and friends: the real answer follows
            return
        user = self.user
        if user is None:
            return
        if self._skip_body:
            self.user = None
            self._ended_at_head = True
            user.upstream_head(status, self._headers)
            user.upstream_end()
            return
        if not self.parser.should_keep_alive() and status not in {204, 304}:
            self._body_ends_at_close = _close_delimited(self._headers)
        user.upstream_head(status, self._headers)

    def on_body(self, body: bytes) -> None:
        """Response body bytes."""
        if self.user is not None:
            self._body_parts.append(body)

    def on_message_complete(self) -> None:
        """The response is complete."""
        if self._interim:
            self._interim = False
            return
        self._pass_body()
        user, self.user = self.user, None
        self._body_ends_at_close = False
        if user is not None:
            user.upstream_end()
            self._done()

    def _pass_body(self) -> None:
        """Hand the user the body bytes read (see ``relay.wire.reading.read_pieces``)."""
        parts = self._body_parts
        if parts:
            self._body_parts = []
            for piece in read_pieces(parts):
                if self.user is None:
                    return
                self.user.upstream_body(piece)

    def _done(self) -> None:
        self.reused = True
        if self.parser.should_keep_alive():
            self.pool.release(self)
        else:
            self.close()


def _close_delimited(headers: list[tuple[str, str]]) -> bool:
    for name, value in headers:
        low = name.lower()
        if low == "content-length" or (low == "transfer-encoding" and "chunked" in value.lower()):
            return False
    return True
