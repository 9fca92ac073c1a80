"""One client request carried through a tunnel by callbacks (the relay's hot path).

The client connection (:mod:`relay.proxy.front`) parses the request and feeds it here; the
tunnel's read loop delivers the agent's frames here; each side's bytes are written to the
other at once. Credit flows like the task-based path: request body bytes go out as the
agent grants credit (the client is not read meanwhile); response body bytes are granted
back as the client's socket takes them.

The response framing is the relay's own: a whole body in the head frame gets its exact
``Content-Length``; a streamed body keeps the upstream's length (and is cut if the agent
sends more or less) or is chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from directory.errors import DirectoryError
from relay.errors import StreamError, StreamRefused, StreamReset, StreamViolation, TunnelClosed
from relay.machine.access_log import CLIENT_GONE
from relay.proxy.error_pages import error_response, wants_html
from relay.proxy.headers import request_headers_for_upstream, response_headers_for_client
from relay.proxy.locate import Missing, live_machine, locate
from relay.proxy.origin import Origin, resolve_origin
from relay.tracing import (
    SERVER_ERRORS,
    TRACING,
    carry,
    failed,
    record_status,
    start_server_span,
    within,
)
from relay.wire.flow import FlowStream
from relay.wire.http1 import (
    LAST_CHUNK,
    HeaderRefused,
    chunk,
    final_status_refused,
    header_bytes,
    response_head,
    status_line,
)
from relay.wire.protocol import Body, ReqHead, ResetCode, RespHead
from relay.wire.reading import HEAD_READ

if TYPE_CHECKING:
    import asyncio

    from opentelemetry.trace import Span

    from relay.machine.state import RelayState
    from relay.machine.tunnels import Tunnel

__all__ = ["ClientExchange", "RequestInfo"]

_INLINE_BODY = 16 * 1024  # small request bodies ride in the head frame
_NO_BODY_STATUS = frozenset({204, 304})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_LENGTH_DIGITS = 1000  # a Content-Length with more is refused (int() takes 4,300)


class Client(Protocol):
    """The client connection as an exchange uses it (``relay.proxy.front``)."""

    peer: str
    write_paused: bool
    state: RelayState
    loop: asyncio.AbstractEventLoop

    def write(self, data: bytes) -> None:
        """Write to the client."""

    def writelines(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` to the client, in one go."""

    def write_continue(self) -> None:
        """Answer ``Expect: 100-continue``."""

    def pause_reading(self) -> None:
        """Stop reading the client (counted)."""

    def resume_reading(self) -> None:
        """Undo one pause."""

    def close(self) -> None:
        """Close once written."""

    def exchange_done(self, exchange: ClientExchange, *, keep_alive: bool) -> None:
        """The response is complete."""


class RequestInfo:
    """What the client connection parsed of one request head."""

    # A plain class, not a dataclass: compiled (relay/hot_path.py), a dataclass keeps the
    # interpreted __init__ that dataclasses generates, on every request.
    __slots__ = (
        "chunked",
        "elsewhere",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "length",
        "method",
        "slug",
        "started",
        "target",
        "wanted",
    )

    def __init__(  # noqa: PLR0913 - one per field of the parsed head
        self,
        *,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        wanted: dict[bytes, str],
        host: str,
        slug: str,
        http11: bool,
        keep_alive: bool,
        length: int | None,
        chunked: bool,
        started: float,
        elsewhere: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.wanted = wanted  # the few headers the relay reads, by lower-case name
        self.host = host
        self.slug = slug
        self.http11 = http11
        self.keep_alive = keep_alive
        self.length = length
        self.chunked = chunked
        self.started = started  # loop time the head began
        # No tunnel here when the head came: locate the host and answer with a replay,
        # 404 or 503 on this connection (bodiless requests in fly-replay mode, see the
        # front).
        self.elsewhere = elsewhere


class ClientExchange(FlowStream):
    """Request to the agent, response to the client; see the module docstring."""

    __slots__ = (
        "_body",
        "_body_inline",
        "_burst",
        "_burst_bytes",
        "_client_ip",
        "_error_id",
        "_head",
        "_head_sent",
        "_lookup",
        "_out_chunked",
        "_received",
        "_remaining",
        "_request_done",
        "_retried",
        "_sent",
        "_status",
        "_unacked",
        "client",
        "deadline",
        "info",
        "keep_alive",
        "span",
        "tunnel",
    )

    def __init__(self, client: Client, info: RequestInfo) -> None:
        # FlowStream.__init__ runs in start(), once the stream has a tunnel and an id.
        self.client = client
        self.info = info
        self.tunnel: Tunnel | None = None
        self.keep_alive = info.keep_alive
        self._body: list[bytes] = []  # body bytes held until the head frame goes out
        self._body_inline = False
        self._request_done = False
        self._received = 0  # request body bytes from the client
        self._sent = 0  # response body bytes to the client
        self._status = 0  # the status answered (0: none yet)
        self._error_id: str | None = None  # X-Request-Id of an error the relay answered
        self._client_ip = ""  # resolved in start()
        self._head_sent = False
        self._out_chunked = False
        self._remaining = -1  # response body bytes still due (-1: not length-delimited)
        self._unacked = 0  # response bytes written while the client's socket was full
        # Body pieces of the message being dispatched, written together after it
        # (flush_burst): a write each made a message of tiny Data frames a syscall each.
        self._burst: list[bytes] | None = None
        self._burst_bytes = 0
        # Loop time by which the response head is due (0: none pending). The front's
        # sweep enforces it: a timer per request cost more than the sweep's one check.
        self.deadline = 0.0
        self._head: ReqHead | None = None  # an inline-body head waiting for its body
        self._lookup: asyncio.Task[None] | None = None  # locating a host held elsewhere
        self._retried = False  # sent again once after its tunnel closed (see on_reset)
        self.span: Span | None = None  # this request's server span (tracing on only)

    # -- the request (fed by the client connection) --------------------------------------

    def start(self) -> None:
        """Open the stream on the host's tunnel and send the request head."""
        client = self.client
        info = self.info
        state = client.state
        tracer = TRACING.tracer
        if tracer is not None:
            wanted = info.wanted
            self.span = start_server_span(
                tracer,
                info.method,
                info.target,
                info.host,
                info.slug,
                state.config.machine_id,
                wanted.get(b"traceparent"),
                wanted.get(b"tracestate"),
            )
        tunnel = state.tunnels.by_slug.get(info.slug)
        if tunnel is not None:
            self._open(tunnel)
        elif info.elsewhere:
            self._lookup = client.loop.create_task(self._locate(replay=True))
        else:
            # The tunnel left while this request waited behind a pipelined one.
            self._answer_error(503, "host_offline", "the host's tunnel just closed", retry=5)

    def _origin(self) -> Origin:
        client = self.client
        wanted = self.info.wanted
        origin = resolve_origin(
            lambda name: wanted.get(name.lower().encode()),
            peer=client.peer,
            scheme="http",
            cluster_secret=client.state.cluster_secret,
            trust_fly_headers=client.state.config.trust_fly_headers,
        )
        self._client_ip = origin.client_ip
        return origin

    def _open(self, tunnel: Tunnel) -> None:
        client = self.client
        state = client.state
        info = self.info
        tunnel.requests += 1
        cfg = state.config
        max_body = cfg.max_body
        if max_body and info.length is not None and info.length > max_body:
            self._answer_error(413, "too_large", f"body of {info.length} bytes exceeds {max_body}")
            return
        origin = self._origin()
        headers = request_headers_for_upstream(
            info.headers,
            client_ip=origin.client_ip,
            proto=origin.proto,
            host=info.host,
            trust_fly_headers=cfg.trust_fly_headers,
        )
        # The agent's parent is the relay's span, in the head frame and the headers alike.
        span = self.span
        trace = info.wanted.get(b"traceparent", "") if span is None else carry(span, headers)
        if header_bytes(headers) > min(tunnel.peer_limits.max_header_bytes, cfg.max_header_bytes):
            self._answer_error(431, "headers_too_large", "request headers exceed the host's limit")
            return
        try:
            sid = tunnel.allocate_sid()
        except StreamRefused as exc:
            state.metrics.proxy_errors.add(1, {"reason": "stream_refused"})
            self._answer_error(exc.http_status, exc.code, str(exc), retry=1)
            return
        FlowStream.__init__(self, tunnel, sid)
        self.tunnel = tunnel
        self.deadline = client.loop.time() + cfg.request_timeout
        self._send_head(sid, headers, trace)

    async def _locate(self, *, replay: bool) -> None:
        """The host is not held here: a tunnel that lands meanwhile, a replay, 404 or 503.

        Without ``replay`` (forward mode) an owner elsewhere does not count: only a tunnel
        that comes here within the reconnect grace does.
        """
        state = self.client.state
        slug = self.info.slug
        origin = self._origin()

        async def to_owner(machine_id: str) -> str | None:
            if not replay or await live_machine(state, machine_id) is None:
                return None
            return machine_id

        try:
            with within(self.span):  # the lookups are children of this request's span
                found = await locate(state, slug, hopped=origin.hopped, to_owner=to_owner)
        except DirectoryError as exc:
            state.metrics.proxy_errors.add(1, {"reason": "store_unavailable"})
            state.log.warning("proxy.store_error", slug=slug, error=str(exc))
            self._answer_error(exc.http_status, exc.code, "the directory is unreachable", retry=2)
            return
        except Exception as exc:  # a bug here must answer the client, not leave it hanging
            state.log.exception("proxy.internal_error", slug=slug, error=repr(exc))
            self._answer_error(500, "internal_error", "the relay failed to locate the host")
            return
        finally:
            self._lookup = None
        if isinstance(found, str):
            self._answer_replay(found)
        elif found is Missing.UNKNOWN_HOST:
            self._answer_error(404, "unknown_host", f"no host is registered as {slug!r}")
        elif found is Missing.OFFLINE:
            state.log.info("proxy.host_offline", slug=slug, hopped=origin.hopped)
            self._answer_error(
                503, "host_offline", f"host {slug!r} is not connected right now", retry=5
            )
        else:
            self._open(found)

    def _send_head(self, sid: int, headers: list[tuple[str, str]], trace: str) -> None:
        """The request head, alone, with its small body, or before a streamed body."""
        info = self.info
        length = info.length
        if length == 0 or (length is None and not info.chunked):
            self._request_done = True
            self.send(ReqHead(sid, info.method, info.target, headers, trace=trace))
            return
        if info.wanted.get(b"expect", "").lower() == "100-continue":
            self.client.write_continue()
        if length is not None and length <= _INLINE_BODY:
            # Small body: the head frame goes out with it, once it is all here.
            self._body_inline = True
            self._head = ReqHead(sid, info.method, info.target, headers, Body.SIZED, length, trace)
            if self._request_done:
                self._send_inline()
            return
        kind = Body.SIZED if length is not None else Body.CHUNKED
        size = -1 if length is None else length
        self.send(ReqHead(sid, info.method, info.target, headers, kind, size, trace, end=False))
        held, self._body = self._body, []
        for piece in held:
            self.send_body(piece)
        if self._request_done:
            self.send_body(b"", end=True)

    def client_body(self, data: bytes) -> None:
        """Request body bytes from the client."""
        if self.state_reset:
            return
        self._received += len(data)
        max_body = self.client.state.config.max_body
        if max_body and self._received > max_body:
            self._too_large(max_body)
            return
        if self.tunnel is None or self._body_inline:
            self._body.append(data)
        else:
            self.send_body(data)

    def client_end(self) -> None:
        """The request body is complete."""
        if self._request_done:
            return  # a bodiless request: its head said so already
        self._request_done = True
        if self.tunnel is None or self.state_reset:
            return
        if self._body_inline:
            self._send_inline()
        else:
            self.send_body(b"", end=True)

    def client_gone(self) -> None:
        """The client disconnected: tell the agent so it aborts the upstream call."""
        self.deadline = 0.0
        if self._lookup is not None:
            self._lookup.cancel()
        if self.tunnel is not None and not self.state.reset:
            self.reset(ResetCode.CANCEL, "client disconnected")
        self._report(self._status or CLIENT_GONE, self.client.loop.time() - self.info.started)
        if self.span is not None:
            failed(self.span, "client_disconnected", "the client left before the response ended")
            self.span.end()
            self.span = None

    def refuse(self, status: int, code: str, message: str) -> bool:
        """The rest of the request was malformed: answer ``status`` and close.

        False when a response has begun: then only cutting the connection is left.
        """
        if self._head_sent:
            return False
        if self._lookup is not None:
            self._lookup.cancel()
        if self.tunnel is not None and not self.state.reset:
            self.reset(ResetCode.CANCEL, "the client's request was malformed")
        self.keep_alive = False
        self._answer_error(status, code, message)
        return True

    def reset(self, code: ResetCode, reason: str = "") -> None:
        """Abort the stream and tell the agent (once); forgets it.

        Quietly while the head is held for its body: the agent never heard of the
        stream, and a Reset for a stream it has not seen opened breaks the protocol.
        """
        if self._head is not None:
            self._head = None
            self.state.on_reset()
            self.close()
            return
        super().reset(code, reason)

    def client_writable(self) -> None:
        """The client's socket drained: grant the credit held back meanwhile."""
        if self._unacked and self.tunnel is not None:
            n, self._unacked = self._unacked, 0
            self.consumed(n)

    @property
    def state_reset(self) -> bool:
        """The stream was reset (or never opened and already answered)."""
        return self.tunnel is not None and self.state.reset

    def _send_inline(self) -> None:
        head = self._head
        assert head is not None  # noqa: S101 - set with _body_inline
        self._head = None
        body = b"".join(self._body)
        self._body = []
        tunnel = self.tunnel
        assert tunnel is not None  # noqa: S101 - set with _head
        sid = head.sid
        if sid != tunnel.next_sid - 1:
            # Streams opened since went out first, and the agent takes stream ids in
            # increasing order only: this one, never announced, takes a new id.
            tunnel.forget(sid)
            try:
                sid = tunnel.allocate_sid()
            except StreamRefused as exc:
                self.state.on_reset()
                self.client.state.metrics.proxy_errors.add(1, {"reason": "stream_refused"})
                self._answer_error(exc.http_status, exc.code, str(exc), retry=1)
                return
            self.sid = sid
            self.state.sid = sid
            tunnel.streams[sid] = self
        self.send(
            ReqHead(
                sid,
                head.method,
                head.target,
                head.headers,
                head.body,
                head.length,
                head.trace,
                body,
                end=True,
            )
        )

    def _too_large(self, max_body: int) -> None:
        self.keep_alive = False
        if self.tunnel is not None:
            self.reset(ResetCode.TOO_LARGE, f"body exceeds {max_body} bytes")
        if not self._head_sent:
            self._answer_error(413, "too_large", f"body exceeds {max_body} bytes")
        else:
            self.client.close()

    # -- flow control of the request body ------------------------------------------------

    def read_allowance(self) -> int:
        """How much of the client to read next.

        While the body streams, what its stream may take (:meth:`FlowStream.read_allowance`);
        else a head's worth.
        """
        if self.tunnel is None or self._request_done or self._body_inline:
            return HEAD_READ
        return super().read_allowance()

    def on_blocked(self) -> None:
        """No credit for more of the request body: stop reading the client."""
        self.client.pause_reading()

    def on_unblocked(self) -> None:
        """Credit is back: read the client again."""
        self.client.resume_reading()

    # -- the response (from the tunnel's read loop) ---------------------------------------

    def on_head(self, frame: ReqHead | RespHead) -> None:
        """The response head: write it (and an inline body) to the client."""
        if type(frame) is not RespHead or self._head_sent:
            if self._head_sent:
                self._interrupted("a second response head")
            else:
                self.reset(ResetCode.INTERNAL, "expected a response head")
                self._fail_response(502, "upstream_error", "the host's agent broke the protocol")
            return
        self.deadline = 0.0
        status = frame.status
        info = self.info
        no_body = info.method == "HEAD" or status in _NO_BODY_STATUS
        if not 200 <= status <= 599:
            bad_status = final_status_refused(status) or ""
            self.reset(ResetCode.INTERNAL, "no valid final status")
            self._fail_response(502, "upstream_error", bad_status)
            return
        state = self.client.state
        if state.draining or not self._request_done:
            # A body the upstream did not wait for would be read as the next request.
            self.keep_alive = False
        try:
            head = self._response_head(frame, no_body=no_body)
        except HeaderRefused as exc:
            self.reset(ResetCode.INTERNAL, "response header refused")
            self._fail_response(502, "upstream_error", f"bad response header from the host: {exc}")
            return
        self._answered(status)
        if frame.end:
            if frame.chunk and not no_body:
                self._sent = len(frame.chunk)
                self.client.write(head + frame.chunk)
            else:
                self.client.write(head)
            self._finish()
            return
        self.client.write(head)
        if no_body:
            # Nothing may follow this head on the wire; the agent's end marker is ignored.
            self.reset(ResetCode.CANCEL, "no body allowed")
            self._finish()
        elif frame.chunk:
            self.on_data(frame.chunk, end=False)  # a first piece of a streamed body

    def _response_head(self, frame: RespHead, *, no_body: bool) -> bytes:
        """The head for the client, with the relay's own framing of the body."""
        extra = ""
        if frame.end:
            headers = response_headers_for_client(frame.headers, keep_length=no_body)
            if not no_body:
                extra = f"Content-Length: {len(frame.chunk)}\r\n"
        else:
            headers = response_headers_for_client(frame.headers)
            if not no_body:
                length = _content_length(headers)
                if length is not None:
                    self._remaining = length
                elif self.info.http11:
                    self._out_chunked = True
                    extra = "Transfer-Encoding: chunked\r\n"
                else:
                    self.keep_alive = False
        if not self.keep_alive:
            extra += "Connection: close\r\n"
        return response_head(frame.status, headers, extra)

    def on_data(self, chunk_: bytes, *, end: bool) -> None:
        """Response body bytes: to the client, credit back once its socket took them."""
        if not self._head_sent:
            self.reset(ResetCode.INTERNAL, "body before the response head")
            self._fail_response(502, "upstream_error", "the host's agent broke the protocol")
            return
        if chunk_:
            n = len(chunk_)
            self._sent += n
            if self._remaining >= 0:
                if n > self._remaining:
                    self._interrupted("more body than its Content-Length")
                    return
                self._remaining -= n
            piece = chunk(chunk_) if self._out_chunked else chunk_
            burst = self._burst
            if burst is None:
                self._burst = [piece]
                self.conn.flush_after(self)
            else:
                burst.append(piece)
            self._burst_bytes += n
        if end:
            if self._remaining > 0:
                self._interrupted("body shorter than its Content-Length")
                return
            self.flush_burst()
            if self._out_chunked:
                self.client.write(LAST_CHUNK)
            self._finish()

    def flush_burst(self) -> None:
        """Write the body pieces of the message dispatched; credit back once taken."""
        burst = self._burst
        if burst is None:
            return
        self._burst = None
        n, self._burst_bytes = self._burst_bytes, 0
        client = self.client
        if len(burst) == 1:
            client.write(burst[0])
        else:
            client.writelines(burst)
        if self.conn.streams.get(self.sid) is not self:
            return  # ended meanwhile (the client left): no credit for a forgotten stream
        if client.write_paused:
            self._unacked += n
        else:
            self.consumed(n)

    def on_reset(self, error: StreamError) -> None:
        """The agent reset the stream or the tunnel closed."""
        self.deadline = 0.0
        if self._head_sent:
            self._interrupted(str(error))
            return
        if isinstance(error, StreamViolation):
            self._fail_response(502, "upstream_error", "the host's agent broke the protocol")
        elif isinstance(error, StreamReset) and error.reset_code == ResetCode.HEADERS_TOO_LARGE:
            self._fail_response(431, "headers_too_large", "request headers exceed the host's limit")
        elif isinstance(error, StreamReset) and error.reset_code == ResetCode.TOO_LARGE:
            self._fail_response(413, "too_large", error.reason or "request too large")
        elif isinstance(error, TunnelClosed):
            if self._send_again():
                return
            self._fail_response(
                error.http_status, error.code, "the host's tunnel closed during the request"
            )
        else:
            self._fail_response(502, "upstream_error", "the host's service failed")

    def _send_again(self) -> bool:
        """Whether the request goes out again on the host's next tunnel (once).

        Only an idempotent request without a body whose tunnel closed before any answer
        (an agent restarting, a reconnect): the agent may have called the service, which
        RFC 9110 allows for these methods. Where the host comes back, here within the
        reconnect grace or elsewhere (a replay), is found as for a request held elsewhere.
        """
        info = self.info
        if self._retried or info.method not in _IDEMPOTENT or info.length or info.chunked:
            return False
        self._retried = True
        self.tunnel = None
        client = self.client
        state = client.state
        state.metrics.proxy_errors.add(1, {"reason": "sent_again"})
        replay = state.config.route_mode == "fly-replay"
        self._lookup = client.loop.create_task(self._locate(replay=replay))
        return True

    # -- endings -------------------------------------------------------------------------

    def close(self) -> None:
        """Forget the stream (if it was ever opened)."""
        if self.tunnel is not None:
            super().close()

    def check_deadline(self, now: float) -> None:
        """Called by the front's sweep: 504 once the response head is overdue."""
        if not self.deadline or now < self.deadline:
            return
        self.deadline = 0.0
        if self._head_sent or self.state.reset:
            return
        self.reset(ResetCode.TIMEOUT, "response headers timed out")
        timeout = self.client.state.config.request_timeout
        self._fail_response(504, "upstream_timeout", f"no response headers within {timeout:g} s")

    def _interrupted(self, why: str) -> None:
        """Headers are out: cutting the connection is the only honest signal left."""
        self.flush_burst()  # what came before the fault is the client's
        state = self.client.state
        state.metrics.proxy_errors.add(1, {"reason": "body_interrupted"})
        state.log.warning("proxy.body_interrupted", slug=self.info.slug, error=why)
        if self.span is not None:
            failed(self.span, "body_interrupted", why)
        if not self.state.reset:
            self.reset(ResetCode.CANCEL, why)
        self.close()
        self.keep_alive = False
        self._finish()
        self.client.close()

    def _fail_response(self, status: int, code: str, message: str) -> None:
        """Answer with an error (the stream is already reset or done)."""
        self.close()
        if status >= 500:
            self.client.state.metrics.proxy_errors.add(1, {"reason": code})
        self._answer_error(status, code, message)

    def _answer_error(
        self, status: int, code: str, message: str, *, retry: int | None = None
    ) -> None:
        state = self.client.state
        if not self._request_done:
            self.keep_alive = False  # the rest of the body would be read as a request
        close = not self.keep_alive or state.draining
        body, request_id = error_response(
            status,
            code,
            message,
            retry_after=retry,
            close=close,
            head_only=self.info.method == "HEAD",
            html=wants_html(self.info.wanted.get(b"accept", "")),
        )
        state.log.info(
            "proxy.error",
            status=status,
            code=code,
            slug=self.info.slug,
            request_id=request_id,
            detail=message,
        )
        self._answered(status)
        self._error_id = request_id
        self.client.write(body)
        self.keep_alive = not close
        self._finish()

    def _answer_replay(self, machine_id: str) -> None:
        """Ask Fly's proxy to send this request to ``machine_id`` (an empty 409)."""
        state = self.client.state
        state.metrics.replays.add(1)
        self._answered(409)
        close = not self.keep_alive or state.draining
        self.client.write(
            status_line(409)
            + f"fly-replay: instance={machine_id}\r\nContent-Length: 0\r\n".encode()
            + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        )
        self.keep_alive = not close
        self._finish()

    def _answered(self, status: int) -> None:
        """A response head goes out now: count it, note it on the span."""
        self._head_sent = True
        self._status = status
        self.client.state.metrics.requests_by_status[status] += 1
        if self.span is not None:
            record_status(self.span, status, SERVER_ERRORS)

    def _finish(self) -> None:
        """The response is complete."""
        self.deadline = 0.0
        if self.tunnel is not None:
            if self._paused:
                # Request body still waiting for credit: the client is read again (for
                # its next request); what waited is not needed any more.
                self._paused = False
                self.client.resume_reading()
            if not self._request_done and not self.state.reset:
                # The upstream answered before the whole body came: stop sending it.
                self.reset(ResetCode.CANCEL, "response complete")
            self.close()
        client = self.client
        elapsed = client.loop.time() - self.info.started
        client.state.metrics.request_duration.observe(elapsed)
        self._report(self._status, elapsed)
        if self.span is not None:
            self.span.end()
            self.span = None
        client.exchange_done(self, keep_alive=self.keep_alive)

    def _report(self, status: int, elapsed: float) -> None:
        """Count the body bytes that crossed; the access-log line when it is on."""
        state = self.client.state
        metrics = state.metrics
        metrics.request_bytes += self._received
        metrics.response_bytes += self._sent
        access_log = state.access_log
        if access_log is not None:
            info = self.info
            access_log.record(
                request_id=self._error_id or info.wanted.get(b"x-request-id"),
                host=info.slug,
                method=info.method,
                target=info.target,
                status=status,
                seconds=elapsed,
                request_bytes=self._received,
                response_bytes=self._sent,
                client=self._client_ip or self.client.peer,
            )


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    """The one valid Content-Length among ``headers``; None when absent or not usable."""
    found: int | None = None
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            text = value.strip()
            # ASCII digits only: str.isdigit() also takes "\xb2" (a superscript), which
            # int() refuses, as it does more than 4,300 digits.
            if not (text.isascii() and text.isdigit()) or len(text) > _MAX_LENGTH_DIGITS:
                raise HeaderRefused("invalid Content-Length")
            if found is not None and int(text) != found:
                raise HeaderRefused("invalid Content-Length")
            found = int(text)
    return found
