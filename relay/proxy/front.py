"""The public listener: client connections parsed by httptools, host traffic served here.

Every client connection starts on :class:`ClientConnection`, an asyncio protocol that
parses requests with httptools (llhttp, the C parser) and serves requests for
``<slug>.<base-domain>`` whose tunnel this machine holds straight through the tunnel
(:class:`relay.proxy.exchange.ClientExchange`): no aiohttp request, response, task or
middleware per request.

A bodiless request for a host held elsewhere, unknown or offline is answered here too in
fly-replay mode (:mod:`relay.proxy.locate`: a replay, 404 or 503), keeping the connection.
Everything else (the relay's own routes, WebSocket upgrades, requests to forward) is
*handed off*: the connection switches to aiohttp's request handler, which serves that
one request with the full application (forward, the API) and closes the connection.
The head already parsed is written back out as bytes for aiohttp to parse again, with
any body bytes that came with it, as uvicorn does for upgrades.

Timeouts a client cannot hold open: the whole request head within ``header_timeout``
(408), an idle keep-alive connection closes after ``keepalive_timeout``; a response head
is due within ``request_timeout`` (504). One sweep per server checks them, every quarter
of the shortest (at most a second), rather than a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from relay.proxy.error_pages import error_response, wants_html
from relay.proxy.exchange import ClientExchange, RequestInfo
from relay.proxy.routing import slug_from_host
from relay.sockets import listening_socket
from relay.wire.http1 import LAST_CHUNK, chunk
from relay.wire.reading import HEAD_READ, READ_SIZE, read_buffer, read_pieces

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.machine.state import RelayState

__all__ = ["ClientConnection", "FrontServer"]

# Request headers the fast path looks at, by lower-case name.
_WANTED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"x-relay-hop",
        b"x-relay-auth",
        b"x-relay-client-ip",
        b"x-relay-proto",
        b"fly-client-ip",
        b"x-forwarded-proto",
        b"fly-replay-src",
        b"traceparent",
        b"tracestate",
        b"accept",
        b"x-request-id",  # for --access-log only
    }
)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The HTTP versions served (HTTP/2 reaches the relay only through a proxy that speaks 1.1).
_VERSIONS: Final = frozenset({"1.0", "1.1"})
#: Where agents open their tunnels (DESIGN: Tunnel protocol).
TUNNEL_PATH: Final = "/tunnel"
# Descriptors kept free for what serving the connections we have needs (store pool
# reconnects, upstream and peer connections): past that, new clients are turned away.
_FD_RESERVE: Final = 64
_SWEEP_MIN: Final = 0.05  # seconds between sweeps at the least (see FrontServer._sweep)


class _Refused(Exception):
    """A request refused while its head is parsed (raised through httptools)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class FrontServer:
    """The listening socket and its client connections."""

    def __init__(
        self,
        state: RelayState,
        handoff: Callable[[], asyncio.Protocol],
        tunnels: Callable[[], asyncio.Protocol],
    ) -> None:
        self.state = state
        self.handoff_factory = handoff  # aiohttp's application: API, dashboard, slow path
        self.tunnel_factory = tunnels  # agents' upgrades (relay.server.endpoint)
        self.connections: set[ClientConnection] = set()
        self.read_buffer = read_buffer()  # its connections read into it (see relay.wire.reading)
        self.head_buffer = self.read_buffer[:HEAD_READ]  # while no body streams
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        cfg = state.config
        self.base_domain = cfg.base_domain
        self.test_zone = (cfg.dns_test_zone or "").strip(".").lower() or None
        # Requests for hosts held elsewhere are answered here with fly-replay; in forward
        # mode they need aiohttp's client and go to the handoff path.
        self.replays = cfg.route_mode == "fly-replay"
        # Open descriptors: counted by the sweep, plus one per connection accepted since.
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fds_open = _open_descriptors()
        self.refused = 0  # connections turned away for want of descriptors
        self._refusal_logged_at = 0.0

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> None:
        """Listen on ``host:port``."""
        sock = listening_socket(host, port, backlog=backlog)
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), sock=sock, backlog=backlog
            )
        else:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), host, port, backlog=backlog, reuse_address=True
            )
        self._sweeper = self.loop.create_task(self._sweep(), name="front-sweep")

    def slug_of(self, host: str | None) -> str | None:
        """The slug a Host header names, under the base domain or the DNS test zone."""
        slug = slug_from_host(host, self.base_domain)
        if slug is None and self.test_zone is not None:
            slug = slug_from_host(host, self.test_zone)
        return slug

    async def _sweep(self) -> None:
        """Close connections past their header, keep-alive or response deadline."""
        cfg = self.state.config
        shortest = min(cfg.header_timeout, cfg.keepalive_timeout, cfg.request_timeout)
        # A quarter of the shortest timeout, within [50 ms, 1 s]: each sweep visits every
        # connection and counts the open descriptors.
        period = max(_SWEEP_MIN, min(1.0, shortest / 4))
        state = self.state
        while True:
            await asyncio.sleep(period)
            now = self.loop.time()
            self.fds_open = _open_descriptors()
            for conn in list(self.connections):
                try:
                    conn.check_deadlines(now, cfg.header_timeout, cfg.keepalive_timeout)
                except Exception as exc:
                    # A bug answering one connection must not end the sweep, and with it
                    # every timeout of this process: that connection goes, loudly.
                    state.metrics.proxy_errors.add(1, {"reason": "internal_error"})
                    state.log.exception("proxy.sweep_error", error=repr(exc))
                    if conn.transport is not None:
                        conn.transport.abort()

    def admit(self) -> bool:
        """Whether a new connection may be served (False: out of descriptors, logged)."""
        self.fds_open += 1
        if self.fds_open < self.fd_limit - _FD_RESERVE:
            return True
        self.refused += 1
        now = self.loop.time()
        if now - self._refusal_logged_at >= 1.0:  # a flood of refusals: one line a second
            self._refusal_logged_at = now
            self.state.log.warning(
                "relay.descriptors_exhausted",
                open=self.fds_open,
                limit=self.fd_limit,
                refused_total=self.refused,
                hint="raise the nofile limit of relay serve",
            )
        return False

    async def close(self) -> None:
        """Stop listening and close the connections still ours (not handed off)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()


class ClientConnection(asyncio.BufferedProtocol):
    """One client connection while it carries host traffic (see the module docstring)."""

    __deletable__ = ("parser",)  # compiled (relay.hot_path): the handoff breaks a cycle
    __slots__ = (
        "_body_parts",
        "_handoff",
        "_handoff_chunked",
        "_handoff_tunnel",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_pipelined",
        "_read_pauses",
        "_since",
        "_thin_body",
        "_trailing",
        "_url",
        "_wanted",
        "exchanges",
        "front",
        "loop",
        "parser",
        "peer",
        "state",
        "transport",
        "write_paused",
    )

    def __init__(self, front: FrontServer) -> None:
        self.front = front
        self.state = front.state  # what exchanges read (relay.proxy.exchange.Client)
        self.loop = front.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.exchanges: deque[ClientExchange] = deque()
        self.write_paused = False
        self._read_pauses = 0
        self._pipelined = False  # reading paused while requests wait behind the first
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._wanted: dict[bytes, str] = {}
        self._head_bytes = 0
        # A new connection waits for its first head: header_timeout applies from now.
        self._in_head = True
        self._since = front.loop.time()  # idle since, or head started at
        # After a chunk-size line, until its data: the last chunk's trailer section may
        # follow, bounded like a head (httptools holds a field until it ends).
        self._trailing = False
        # Bytes for aiohttp once the connection is handed off (None: still ours).
        self._handoff: list[bytes] | None = None
        self._handoff_chunked = False
        self._handoff_tunnel = False  # to the tunnel server rather than the application
        self._body_parts: list[bytes] = []  # of this read, handed on after it (_pass_body)
        self._thin_body = False  # the last read's body was many tiny chunks

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        # A TCP server's transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast("asyncio.Transport", transport)
        if not self.front.admit():
            self.transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.front.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: D102, ARG002
        # No more than the request whose body streams may take (relay.wire.flow): a read
        # comes in whole, and an agent that grants no credit would hold all of it.
        exchanges = self.exchanges
        if not exchanges:
            return self.front.head_buffer
        n = exchanges[-1].read_allowance()
        if self._thin_body and n > HEAD_READ:
            # A body of tiny chunks costs a callback a chunk: small reads, so that other
            # connections wait ~1 ms for each, not ~10 (measured with 1-byte chunks).
            return self.front.head_buffer
        if n < READ_SIZE:
            return self.front.read_buffer[:n]
        return self.front.read_buffer

    def buffer_updated(self, nbytes: int) -> None:  # noqa: D102
        data = self.front.read_buffer[:nbytes]
        if self._in_head or self._trailing:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The upgrade request went to handoff mode at headers-complete; what follows
            # its head belongs to the upgraded protocol.
            if self._handoff is not None:
                self._handoff.append(bytes(data[exc.args[0] :]))  # the buffer is reused
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                # A bug in our own callback: say so with the traceback, answer 500, and
                # drop only this connection.
                self.front.state.log.exception("proxy.internal_error", error=repr(refused))
                self._refuse(500, "internal_error", "the relay failed to read the request")
                return
            self._refuse(refused.status, refused.code, str(refused))
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, "bad_request", f"malformed request: {exc}")
            return
        self._pass_body()
        if (self._in_head or self._trailing) and (
            self._head_bytes > self.front.state.config.max_header_bytes + 1024
        ):
            # A header still being received (httptools holds it until it ends).
            self._refuse(431, "headers_too_large", "request headers exceed the relay's limit")
            return
        if self._handoff is not None:
            if not self.exchanges:
                self._hand_off()
            else:
                self._hold()  # its body waits behind the requests in flight, unread

    def eof_received(self) -> bool | None:  # noqa: D102
        return None  # close our side too: a client that stops sending has gone

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102, ARG002
        self.front.connections.discard(self)
        while self.exchanges:
            self.exchanges.popleft().client_gone()
        if self.transport is not None:  # else handed off, which broke the cycle already
            self.transport = None
            del self.parser

    def pause_writing(self) -> None:  # noqa: D102
        self.write_paused = True

    def resume_writing(self) -> None:  # noqa: D102
        self.write_paused = False
        if self.exchanges:
            self.exchanges[0].client_writable()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts."""
        self._in_head = True
        self._head_bytes = 0
        self._since = self.front.loop.time()
        self._url = b""
        self._headers = []
        self._wanted = {}

    def on_url(self, url: bytes) -> None:
        """(Part of) the request target."""
        self._url += url
        if len(self._url) > self.front.state.config.max_header_bytes:
            raise _Refused(414, "uri_too_long", "request target exceeds the relay's limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One complete header (a trailer field is dropped: never merged into the head)."""
        if self._trailing:
            return
        low = name.lower()
        decoded = value.decode("latin-1")
        if low in _WANTED:
            if low == b"host" and low in self._wanted:
                raise _Refused(400, "bad_request", "duplicate Host header")
            self._wanted[low] = decoded
        self._headers.append((name.decode("latin-1"), decoded))

    def on_headers_complete(self) -> None:
        """The head is complete: serve it here, or hand the connection to aiohttp."""
        self._in_head = False
        size = len(self._url) + sum(len(k) + len(v) + 4 for k, v in self._headers)
        if size > self.front.state.config.max_header_bytes:
            raise _Refused(431, "headers_too_large", "request headers exceed the relay's limit")
        parser = self.parser
        version = parser.get_http_version()
        if version not in _VERSIONS:
            # llhttp reads "GET /" as HTTP/0.9 and takes any digits: answered in kind, a
            # client would get a status line it cannot read.
            raise _Refused(505, "http_version_not_supported", "HTTP/1.0 and HTTP/1.1 only")
        if b"host" not in self._wanted and version == "1.1":
            raise _Refused(400, "bad_request", "an HTTP/1.1 request needs a Host header")
        if self._handoff is None:
            host = self._wanted.get(b"host")
            slug = self.front.slug_of(host)
            tunnel = None if slug is None else self.front.state.tunnels.by_slug.get(slug)
            if slug is not None and not parser.should_upgrade():
                if tunnel is not None:
                    self._start(slug, host or "", version)
                    return
                if self.front.replays and self._bodiless():
                    # Held elsewhere, unknown or offline: a replay, 404 or 503 from here,
                    # and the connection stays open (Fly's proxy sends most of a fleet's
                    # requests to a machine that does not hold the host).
                    self._start(slug, host or "", version, elsewhere=True)
                    return
            self._handoff = []
            # An agent's upgrade (its path is checked below): the connection becomes its
            # tunnel (and the requests pipelined behind it, if any, are that server's to
            # refuse).
            self._handoff_tunnel = (
                slug is None and parser.should_upgrade() and parser.get_method() == b"GET"
            )
        # Handoff mode: write the head back out for aiohttp.
        self._handoff_chunked = "chunked" in self._wanted.get(b"transfer-encoding", "").lower()
        method = parser.get_method().decode("latin-1")
        # The Host header decided the route here, so aiohttp gets a path too: an
        # absolute-form target would route it by the URL's host instead (and reach the
        # upstream as its path); authority-form (CONNECT) has no place in a relay.
        target = _origin_form(self._url, method)
        if target is None:
            raise _Refused(400, "bad_request", "request target must be a path")
        if self._handoff_tunnel:
            # The path as aiohttp routes it: absolute-form too, without query or fragment.
            self._handoff_tunnel = target.partition("?")[0].partition("#")[0] == TUNNEL_PATH
        lines = [f"{name}: {value}\r\n" for name, value in self._headers]
        head = f"{method} {target} HTTP/{version}\r\n"
        self._handoff.append((head + "".join(lines) + "\r\n").encode("latin-1"))

    def on_body(self, body: bytes) -> None:
        """Request body bytes (de-chunked by the parser)."""
        self._trailing = False  # a chunk's data: not the last chunk
        if self._handoff is not None:
            self._handoff.append(chunk(body) if self._handoff_chunked else body)
        elif self.exchanges:  # empty: answered early and closing
            self._body_parts.append(body)

    def on_message_complete(self) -> None:
        """The request (body included) is complete."""
        if self._handoff is not None:
            if self._handoff_chunked:
                self._handoff.append(LAST_CHUNK)
            return
        self._pass_body()
        self._thin_body = False
        if not self.exchanges:
            return  # answered early and closing
        self.exchanges[-1].client_end()

    def _pass_body(self) -> None:
        """Hand the request's exchange the body bytes read (see ``read_pieces``)."""
        parts = self._body_parts
        if parts:
            self._body_parts = []
            pieces = read_pieces(parts)
            self._thin_body = len(pieces) < len(parts)
            for piece in pieces:
                if not self.exchanges:
                    return  # answered early and closing
                self.exchanges[-1].client_body(piece)

    def on_chunk_header(self) -> None:
        """A chunk-size line: the last chunk's trailer section may follow."""
        self._trailing = True
        self._head_bytes = 0

    def on_chunk_complete(self) -> None:
        """A chunk ended (the last one after its trailer section)."""
        self._trailing = False

    # -- serving -------------------------------------------------------------------------

    def _bodiless(self) -> bool:
        """The request head says no body follows (what Fly's proxy can replay as is)."""
        length = self._wanted.get(b"content-length")
        return (length is None or length.strip() == "0") and b"transfer-encoding" not in (
            self._wanted
        )

    def _start(self, slug: str, host: str, version: str, *, elsewhere: bool = False) -> None:
        parser = self.parser
        wanted = self._wanted
        method = parser.get_method().decode("latin-1")
        target = _origin_form(self._url, method)
        if target is None:
            raise _Refused(400, "bad_request", "request target must be a path")
        length_text = wanted.get(b"content-length")
        info = RequestInfo(
            method=method,
            target=target,
            headers=self._headers,
            wanted=wanted,
            host=host,
            slug=slug,
            http11=version == "1.1",
            keep_alive=parser.should_keep_alive(),
            length=int(length_text) if length_text is not None else None,
            chunked="chunked" in wanted.get(b"transfer-encoding", "").lower(),
            started=self._since,
            elsewhere=elsewhere,
        )
        exchange = ClientExchange(self, info)
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            exchange.start()
        else:
            self._hold()  # its body waits behind the requests in flight, unread

    def _hold(self) -> None:
        """A pipelined request waits its turn: so does reading more of the client.

        From its head on, not its end: its body would pile up here meanwhile. One pause
        for all that wait, undone when the last of them starts (or the handoff).
        """
        if not self._pipelined:
            self._pipelined = True
            self.pause_reading()

    def write(self, data: bytes) -> None:
        """Write to the client (dropped once the connection is closing)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def writelines(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` to the client in one go (dropped once closing)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(pieces)

    def write_continue(self) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body."""
        self.write(_CONTINUE)

    def pause_reading(self) -> None:
        """Stop reading the client (counted: flow control and pipelining both pause)."""
        self._read_pauses += 1
        if self._read_pauses == 1 and self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo one :meth:`pause_reading`."""
        self._read_pauses -= 1
        if self._read_pauses == 0 and self.transport is not None:
            self.transport.resume_reading()

    def exchange_done(self, exchange: ClientExchange, *, keep_alive: bool) -> None:
        """The exchange's response is complete: next request, handoff, or close."""
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if not keep_alive:
            self.close()
            return
        self._since = self.front.loop.time()
        if self.exchanges:
            if self._pipelined and len(self.exchanges) == 1 and self._handoff is None:
                self._pipelined = False
                self.resume_reading()
            self.exchanges[0].start()
        elif self._handoff is not None:
            self._hand_off()

    def close(self) -> None:
        """Close the connection once what was written is sent."""
        if self.transport is not None:
            self.transport.close()

    def check_deadlines(self, now: float, header_timeout: float, keepalive_timeout: float) -> None:
        """Called by the sweep: enforce the header, keep-alive and response timeouts."""
        if self.exchanges:
            self.exchanges[0].check_deadline(now)  # only the first one is in flight
            return
        if self._handoff is not None:
            return
        if self._in_head:
            if now - self._since > header_timeout:
                self._refuse(408, "request_timeout", "request headers took too long")
        elif now - self._since > keepalive_timeout:
            self.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request refused while it was read (its head or its body), then close."""
        state = self.front.state
        state.metrics.proxy_errors.add(1, {"reason": code})
        exchanges = self.exchanges
        if len(exchanges) == 1 and exchanges[0].refuse(status, code, message):
            return  # answered by the exchange in flight (its body broke off), which closes
        if not exchanges:
            state.metrics.requests_by_status[status] += 1
            html = wants_html(self._wanted.get(b"accept", ""))
            body, request_id = error_response(status, code, message, close=True, html=html)
            self.write(body)
            state.log.info("proxy.request_refused", status=status, code=code, request_id=request_id)
        self.close()

    def _hand_off(self) -> None:
        """Give the connection to aiohttp, with what was read of it so far.

        A pipelined request whose head was only partly read by then cannot be written
        back (httptools keeps the partial bytes); aiohttp then answers it 400, so the
        client sees an error rather than a silent loss. Clients do not pipeline in
        practice, proxies and browsers included.
        """
        transport = self.transport
        buffered = b"".join(self._handoff or ())
        self._handoff = None
        self.front.connections.discard(self)
        # The parser and this protocol refer to each other: break the cycle now, or it
        # lives until a full collection (which the GC policy makes rare) for every
        # tunnel, each of which arrives on a handed-off connection.
        del self.parser
        self.transport = None
        self._headers = []
        self._wanted = {}
        if transport is None or transport.is_closing():
            return
        front = self.front
        handler = front.tunnel_factory() if self._handoff_tunnel else front.handoff_factory()
        # uvloop keeps a buffered protocol's get_buffer and buffer_updated, bound to this
        # connection, until the transport closes, whatever protocol follows: passing
        # through a shared stand-in lets this connection go (tests/unit/test_front_handoff.py).
        transport.set_protocol(_STAND_IN)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._read_pauses:
            self._read_pauses = 0
            transport.resume_reading()
        if buffered:
            handler.data_received(buffered)


class _StandIn(asyncio.BufferedProtocol):
    """The protocol a handed-off connection passes through (see ``_hand_off``).

    It is replaced before the loop runs again, so it never reads.
    """

    def get_buffer(self, sizehint: int) -> memoryview:
        raise RuntimeError(f"a connection in hand-off was asked for {sizehint} bytes")

    def buffer_updated(self, nbytes: int) -> None:
        raise RuntimeError(f"a connection in hand-off was given {nbytes} bytes")


_STAND_IN: Final = _StandIn()


def _origin_form(url: bytes, method: str) -> str | None:
    """The target as a path (origin-form), the only form an upstream is sent.

    Absolute-form (``GET http://h/p``), which HTTP/1.1 servers must accept, becomes its
    path and query; ``OPTIONS *`` stays ``*``; anything else is refused (None).
    """
    if url.startswith(b"/"):
        return url.decode("latin-1")
    if url == b"*":
        return "*" if method == "OPTIONS" else None
    try:
        # Any: its stub says bytes, but the parts a URL lacks are None (and compiled,
        # relay.hot_path, a stub's type is checked on every read).
        parts: Any = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return None
    if not parts.schema or parts.schema.lower() not in {b"http", b"https"}:
        return None
    path = parts.path or b"/"
    if parts.query:
        path += b"?" + parts.query
    return path.decode("latin-1")


def _open_descriptors() -> int:
    """Descriptors this process has open (Linux /proc; 0 where it cannot be read)."""
    try:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    except OSError:
        return 0
