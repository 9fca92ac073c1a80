"""One relayed request served by the agent through its upstream pool, by callbacks.

The relay's frames arrive by :meth:`UpstreamExchange.deliver` (from the tunnel's read
loop); the upstream's answer arrives by the :class:`~relay.agent.http_client.UpstreamUser`
callbacks. A small response with a known length rides whole in the head frame; larger
or unsized ones stream as ``Data`` frames within the relay's credit (the upstream is not
read meanwhile). Request body bytes are written to the upstream as they come and credit
goes back once its socket took them.

With a :class:`~relay.agent.observe.RequestTap` (request lines, inspector) the exchange
keeps a :class:`~relay.agent.observe.Seen` record of itself; without one, nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from relay.agent.answers import error_answer
from relay.agent.tracing import upstream_span
from relay.errors import StreamError, TunnelClosed
from relay.tracing import CLIENT_ERRORS, TRACING, failed, record_status
from relay.wire.flow import FlowStream
from relay.wire.http1 import LAST_CHUNK, HeaderRefused, chunk, request_head
from relay.wire.protocol import Body, ReqHead, ResetCode, RespHead

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from relay.agent.http_client import UpstreamConnection, UpstreamPool
    from relay.agent.observe import RequestTap, Seen
    from relay.wire.connection import TunnelConnection

__all__ = ["UpstreamExchange"]

_INLINE_RESPONSE: Final = 64 * 1024  # small responses with a known length ride in the head
_NO_BODY_STATUS: Final = frozenset({204, 304})
# Framing is the agent's own: the relay's copies of these are not passed on.
# (The relay answered any Expect: 100-continue itself; the body follows regardless.)
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "host", "connection", "expect"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_UNREACHABLE: Final = "the host's local service did not answer"


class UpstreamExchange(FlowStream):
    """Request from the relay to the upstream, response back (module docstring)."""

    __slots__ = (
        "_attempts",
        "_body",
        "_body_inline",
        "_body_sent",
        "_chunked",
        "_conn",
        "_done",
        "_head_sent",
        "_held_head",
        "_request_done",
        "_seen",
        "_span",
        "_unacked",
        "head",
        "pool",
    )

    def __init__(
        self,
        conn: TunnelConnection,
        head: ReqHead,
        pool: UpstreamPool,
        tap: RequestTap | None = None,
    ) -> None:
        super().__init__(conn, head.sid)
        self.head = head
        self.pool = pool
        self._seen: Seen | None = tap.begin(head) if tap is not None else None
        self._conn: UpstreamConnection | None = None
        self._request_done = head.end
        self._body: list[bytes] = [head.chunk] if head.chunk else []  # until connected
        self._body_sent = 0
        self._chunked = head.body == Body.CHUNKED
        self._unacked = 0
        self._head_sent = False
        self._body_inline: list[bytes] | None = None
        self._held_head: tuple[int, list[tuple[str, str]]] = (0, [])
        self._done = False
        self._attempts = 0
        self._span: Span | None = None  # the upstream call's span (tracing on only)
        tracer = TRACING.tracer
        if tracer is not None:
            self._span, self.head = upstream_span(tracer, head, pool)
        # An inline body spends credit like Data: a head cannot carry more than its window.
        self.state.on_receive(len(head.chunk), end=head.end)
        if head.body == Body.SIZED and head.end and len(head.chunk) != head.length:
            self._fail_request("inline body does not match its length")
            return
        pool.acquire(self)

    # -- the relay's frames --------------------------------------------------------------

    def on_data(self, chunk_: bytes, *, end: bool) -> None:
        """Request body bytes from the relay: to the upstream."""
        head = self.head
        if chunk_:
            self._body_sent += len(chunk_)
            if self._seen is not None:
                self._seen.request_body(chunk_)
            if head.body == Body.SIZED and self._body_sent > head.length:
                self._fail_request("request body longer than its length")
                return
            conn = self._conn
            if conn is None:
                self._body.append(chunk_)
            else:
                conn.write(chunk(chunk_) if self._chunked else chunk_)
                if conn.write_paused:
                    self._unacked += len(chunk_)
                else:
                    self.consumed(len(chunk_))
        if end:
            self._request_done = True
            if self._conn is not None and self._chunked:
                self._conn.write(LAST_CHUNK)

    def on_reset(self, error: StreamError) -> None:
        """The relay cancelled the stream (client gone) or the tunnel closed."""
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()  # the service sees the disconnect
        else:
            self.pool.cancel(self)
        if self._span is not None:
            failed(self._span, type(error).__name__, str(error))
        self.close()
        self._report(str(error) or "cancelled")
        if not isinstance(error, TunnelClosed):
            self.conn.log.debug("agent.stream_reset", sid=self.sid, error=str(error))

    # -- the upstream --------------------------------------------------------------------

    def on_connection(self, conn: UpstreamConnection) -> None:
        """A connection is ours: write the request head and what we have of the body."""
        if self._done:
            self.pool.release(conn)
            return
        self._conn = conn
        head = self.head
        pool = self.pool
        headers = [(k, v) for k, v in head.headers if k.lower() not in _FRAMING]
        extra = f"Host: {pool.host_header}\r\n"
        if head.body == Body.SIZED:
            extra += f"Content-Length: {head.length}\r\n"
        elif self._chunked:
            extra += "Transfer-Encoding: chunked\r\n"
        elif head.method in _BODY_METHODS:
            extra += "Content-Length: 0\r\n"
        try:
            # "*" (OPTIONS *) names the server itself: no base path before it.
            target = head.target if head.target == "*" else pool.prefix + head.target
            data = request_head(head.method, target, headers, extra)
        except HeaderRefused as exc:
            self._conn = None
            pool.release(conn)
            self.conn.log.warning("agent.request_refused", sid=self.sid, error=str(exc))
            self._answer(400, "bad_request", f"request refused by the agent: {exc}")
            return
        if head.method == "HEAD":
            conn.expect_no_body()
        held, self._body = self._body, []
        if self._chunked:
            data += b"".join(chunk(piece) for piece in held)
            if self._request_done:
                data += LAST_CHUNK
        else:
            data += b"".join(held)
        conn.write(data)
        # Inline bytes never took credit; streamed ones did.
        streamed = sum(len(p) for p in held) - len(head.chunk)
        if streamed > 0:
            self.consumed(streamed)

    def upstream_writable(self) -> None:
        """The upstream took what we wrote: grant the credit held back meanwhile."""
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.consumed(n)

    def upstream_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        """The response head: inline small bodies, stream the rest."""
        if self._done:
            return
        if self._span is not None:
            record_status(self._span, status, CLIENT_ERRORS)
        no_body = self.head.method == "HEAD" or status in _NO_BODY_STATUS
        if no_body:
            self._send_head(RespHead(self.sid, status, headers, end=True))
            return
        length = _content_length(headers)
        if length is not None and length <= _INLINE_RESPONSE:
            self._body_inline = []
            self._held_head = (status, headers)
            return
        self._send_head(RespHead(self.sid, status, headers))

    def upstream_body(self, data: bytes) -> None:
        """Response body bytes: inline buffer or Data frames within credit."""
        if self._done:
            return
        if self._seen is not None:
            self._seen.response_body(data)
        if self._body_inline is not None:
            self._body_inline.append(data)
        elif not self.send_body(data):
            return  # paused in on_blocked until credit comes back

    def upstream_end(self) -> None:
        """The response is complete."""
        if self._done:
            return
        conn, self._conn = self._conn, None  # the pool takes it back...
        if conn is not None and not self._request_done:
            # ...unless our request body was cut short: the upstream would read the rest
            # of it as the next request.
            conn.abort()
        if self._body_inline is not None:
            status, headers = self._held_head
            self._send_head(
                RespHead(self.sid, status, headers, b"".join(self._body_inline), end=True)
            )
            return
        if self._head_sent:
            self.send_body(b"", end=True)
        self._finish()

    def upstream_failed(self, error: Exception, *, retryable: bool) -> None:
        """The upstream connection failed: retry once, else 502 or reset."""
        if self._done:
            return
        self._conn = None
        intact = self.head.end or not self._body_sent
        if retryable and intact and not self._attempts:
            self._attempts += 1
            self._body = [self.head.chunk] if self.head.chunk else []
            self.pool.acquire(self)
            return
        self.conn.log.warning("agent.upstream_error", sid=self.sid, error=repr(error))
        if self._head_sent:
            if self._span is not None:
                failed(self._span, type(error).__name__, str(error))
            self.reset(ResetCode.UPSTREAM_ERROR, "the local service failed mid-response")
            self._done = True
            self._report("upstream failed mid-response")
            return
        self._answer(502, "upstream_unreachable", "")

    # -- flow control of the response body -----------------------------------------------

    def on_blocked(self) -> None:
        """No credit for more of the response: stop reading the upstream."""
        if self._conn is not None:
            self._conn.pause_reading()

    def on_unblocked(self) -> None:
        """Credit is back: read the upstream again."""
        if self._conn is not None:
            self._conn.resume_reading()

    # -- endings -------------------------------------------------------------------------

    def _send_head(self, head: RespHead) -> None:
        self._head_sent = True
        if self._seen is not None:
            self._seen.response(head.status, head.headers)
        try:
            self.send(head)
        except TunnelClosed:
            self._done = True
            self._report("tunnel closed")
            return
        if head.end:
            self._finish()

    def _answer(self, status: int, code: str, message: str) -> None:
        if self._span is not None:
            failed(self._span, code, message or code)
        headers, body = error_answer(code, message or _UNREACHABLE)
        if self._seen is not None:
            self._seen.response_body(body)
        self._send_head(RespHead(self.sid, status, headers, body, end=True))

    def _fail_request(self, why: str) -> None:
        self.conn.log.warning("agent.request_refused", sid=self.sid, error=why)
        if self._span is not None:
            failed(self._span, "request_refused", why)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        self.reset(ResetCode.INTERNAL, why)
        self._done = True
        self._report(why)

    def _finish(self) -> None:
        self._done = True
        self.close_when_sent()
        self._report("")

    def _report(self, error: str) -> None:
        seen = self._seen
        if seen is not None:
            self._seen = None
            seen.finish(error)

    def close(self) -> None:
        """Forget the stream; its span, if any, ends here (every ending comes by)."""
        if self._span is not None:
            self._span.end()
            self._span = None
        super().close()


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            text = value.strip()
            return int(text) if text.isdigit() else None
    return None
