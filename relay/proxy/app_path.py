"""Client requests for ``<slug>.<base-domain>``: find the tunnel, stream through it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from directory.errors import DirectoryError
from relay.errors import PeerUnreachable, StreamError, StreamRefused, StreamReset, TunnelClosed
from relay.machine.access_log import CLIENT_GONE
from relay.proxy.error_pages import wants_html
from relay.proxy.forward import Origin, forward, origin_of, replay, replayable
from relay.proxy.headers import (
    is_websocket_upgrade,
    request_headers_for_upstream,
    response_headers_for_client,
)
from relay.proxy.locate import Missing, live_machine, locate
from relay.proxy.responses import ERROR_DETAIL, as_page, error_answer, json_error
from relay.proxy.traffic import TRAFFIC, Traffic
from relay.proxy.websocket import proxy_websocket
from relay.tracing import (
    SERVER_ERRORS,
    TRACING,
    carry_current,
    record_status,
    request_span,
)
from relay.wire.http1 import HeaderRefused, check_fields, final_status_refused, header_bytes
from relay.wire.protocol import Body, Data, ReqHead, ResetCode, RespHead

if TYPE_CHECKING:
    from relay.machine.state import RelayState
    from relay.machine.tunnels import Tunnel
    from relay.wire.channel import StreamChannel

__all__ = ["proxy_request"]


async def proxy_request(state: RelayState, request: web.Request, slug: str) -> web.StreamResponse:
    """Serve one client request for ``slug`` through its tunnel (in a span when tracing)."""
    tracer = TRACING.tracer
    if tracer is None:
        return await _serve(state, request, slug)
    with request_span(
        tracer,
        request.method,
        request.raw_path,
        request.host,
        slug,
        state.config.machine_id,
        request.headers,
    ) as span:
        response = await _serve(state, request, slug)
        record_status(span, response.status, SERVER_ERRORS)
        return response


async def _serve(state: RelayState, request: web.Request, slug: str) -> web.StreamResponse:
    started = time.perf_counter()
    traffic = request[TRAFFIC] = Traffic()
    request_id: str | None = None
    try:
        response = await _route(state, request, slug)
        if isinstance(response, web.Response) and ERROR_DETAIL in response:
            code, message, request_id = response[ERROR_DETAIL]
            state.log.info(
                "proxy.error",
                status=response.status,
                code=code,
                slug=slug,
                request_id=request_id,
                detail=message,
            )
            if wants_html(request.headers.get("Accept", "")):
                response = as_page(response)
        if state.draining:
            # No keep-alive while draining: a proxy must not reuse a connection we are
            # about to close under it.
            response.force_close()
        traffic.status = response.status
        return response
    finally:
        # Also when the client left mid-way (the handler is cancelled then): what crossed
        # is counted all the same, and a response whose head went out is counted by it.
        _account(state, request, slug, traffic, time.perf_counter() - started, request_id)


def _account(
    state: RelayState,
    request: web.Request,
    slug: str,
    traffic: Traffic,
    elapsed: float,
    request_id: str | None,
) -> None:
    metrics = state.metrics
    if traffic.status:
        metrics.requests_by_status[traffic.status] += 1
        metrics.request_duration.observe(elapsed)
    metrics.request_bytes += traffic.sent
    metrics.response_bytes += traffic.received
    if state.access_log is not None:
        state.access_log.record(
            request_id=request_id or request.headers.get("X-Request-Id"),
            host=slug,
            method=request.method,
            target=request.raw_path,
            status=traffic.status or CLIENT_GONE,
            seconds=elapsed,
            request_bytes=traffic.sent,
            response_bytes=traffic.received,
            client=origin_of(state, request).client_ip,
        )


async def _route(state: RelayState, request: web.Request, slug: str) -> web.StreamResponse:
    tunnel = state.tunnels.by_slug.get(slug)
    if tunnel is None:
        found = await _locate(state, request, slug)
        if isinstance(found, web.StreamResponse):
            return found
        tunnel = found
    tunnel.requests += 1
    try:
        if is_websocket_upgrade(request.headers):
            return await proxy_websocket(state, request, tunnel)
        return await _proxy_http(state, request, tunnel)
    except StreamRefused as exc:
        state.metrics.proxy_errors.add(1, {"reason": "stream_refused"})
        return error_answer(exc, str(exc), retry_after=1)


async def _locate(
    state: RelayState, request: web.Request, slug: str
) -> Tunnel | web.StreamResponse:
    """No tunnel here: 404, replay or forward to the owner, or wait a grace, else 503."""
    origin = origin_of(state, request)

    async def to_owner(machine_id: str) -> web.StreamResponse | None:
        return await _to_owner(state, request, machine_id, origin)

    try:
        found = await locate(state, slug, hopped=origin.hopped, to_owner=to_owner)
    except DirectoryError as exc:
        state.metrics.proxy_errors.add(1, {"reason": "store_unavailable"})
        state.log.warning("proxy.store_error", slug=slug, error=str(exc))
        return error_answer(exc, "the directory is unreachable", retry_after=2)
    if found is Missing.UNKNOWN_HOST:
        return json_error(404, "unknown_host", f"no host is registered as {slug!r}")
    if found is Missing.OFFLINE:
        state.log.info("proxy.host_offline", slug=slug, hopped=origin.hopped)
        return json_error(
            503, "host_offline", f"host {slug!r} is not connected right now", retry_after=5
        )
    return found


async def _to_owner(
    state: RelayState, request: web.Request, machine_id: str, origin: Origin
) -> web.StreamResponse | None:
    """Replay or forward to the owning machine; None when that machine is gone."""
    machine = await live_machine(state, machine_id)
    if machine is None:
        return None
    if state.config.route_mode == "fly-replay" and replayable(request):
        return replay(state, machine_id)
    try:
        return await forward(state, request, machine, origin)
    except PeerUnreachable as exc:
        state.log.info("proxy.owner_unreachable", machine=machine_id, error=str(exc))
        return None


async def _proxy_http(
    state: RelayState, request: web.Request, tunnel: Tunnel
) -> web.StreamResponse:
    channel = tunnel.open_stream()
    body_task: asyncio.Task[None] | None = None
    try:
        limit = min(tunnel.peer_limits.max_header_bytes, state.config.max_header_bytes)
        head, body_task = await _send_request(state, request, channel, limit)
        try:
            first = await channel.receive_within(state.config.request_timeout)
        except TimeoutError:
            await channel.reset(ResetCode.TIMEOUT, "response headers timed out")
            state.metrics.proxy_errors.add(1, {"reason": "timeout"})
            return json_error(
                504,
                "upstream_timeout",
                f"no response headers within {state.config.request_timeout:g} s",
            )
        if not isinstance(first, RespHead):
            await channel.reset(ResetCode.INTERNAL, "expected a response head")
            return json_error(502, "upstream_error", f"agent sent {type(first).__name__} first")
        bad_status = final_status_refused(first.status)
        if bad_status is not None:
            # The agent skips interim answers: aiohttp would write this one as the response.
            await channel.reset(ResetCode.INTERNAL, "no valid final status")
            state.metrics.proxy_errors.add(1, {"reason": "upstream_error"})
            return json_error(502, "upstream_error", bad_status)
        return await _send_response(state, request, channel, first, head_only=head.method == "HEAD")
    except StreamReset as exc:
        state.metrics.proxy_errors.add(1, {"reason": "reset"})
        if exc.reset_code == ResetCode.TOO_LARGE:
            return json_error(413, "too_large", exc.reason or "request too large")
        if exc.reset_code == ResetCode.HEADERS_TOO_LARGE:
            return json_error(431, "headers_too_large", "request headers exceed the host's limit")
        return json_error(502, "upstream_error", "the host's service failed")
    except TunnelClosed as exc:
        state.metrics.proxy_errors.add(1, {"reason": "tunnel_closed"})
        return error_answer(exc, "the host's tunnel closed during the request")
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: tell the agent so it aborts the upstream call.
        await asyncio.shield(_cancel(channel))
        raise
    finally:
        if body_task is not None and not body_task.done():
            body_task.cancel()
        request[TRAFFIC].took(channel)
        channel.close()


async def _cancel(channel: StreamChannel) -> None:
    with contextlib.suppress(StreamError):
        await channel.reset(ResetCode.CANCEL, "client disconnected")


async def _send_request(
    state: RelayState, request: web.Request, channel: StreamChannel, header_limit: int
) -> tuple[ReqHead, asyncio.Task[None] | None]:
    """Send the request head (and small bodies inline); stream larger bodies in a task."""
    origin = origin_of(state, request)
    headers = request_headers_for_upstream(
        list(request.headers.items()),
        client_ip=origin.client_ip,
        proto=origin.proto,
        host=request.host,
        trust_fly_headers=state.config.trust_fly_headers,
    )
    if header_bytes(headers) > header_limit:
        raise StreamReset(ResetCode.HEADERS_TOO_LARGE, "request headers exceed the limit")
    length = request.content_length
    chunked = request.headers.get("Transfer-Encoding", "").lower().endswith("chunked")
    max_body = state.config.max_body
    if max_body and length is not None and length > max_body:
        raise StreamReset(ResetCode.TOO_LARGE, f"body of {length} bytes exceeds {max_body}")
    trace = carry_current(headers, request.headers.get("traceparent", ""))
    if not request.body_exists or (length == 0 and not chunked):
        head = ReqHead(channel.sid, request.method, request.raw_path, headers, trace=trace)
        await channel.send(head)
        return head, None
    # No small body inline here (the fast path does that): waiting for it between taking
    # the stream's id and sending its head let later streams go out first, and the agent
    # takes stream ids in increasing order only (this path is rare: upgrade requests).
    kind = Body.SIZED if length is not None else Body.CHUNKED
    head = ReqHead(
        channel.sid,
        request.method,
        request.raw_path,
        headers,
        kind,
        length if length is not None else -1,
        trace,
        end=False,
    )
    await channel.send(head)
    return head, asyncio.create_task(_pump_body(request, channel, max_body))


async def _pump_body(request: web.Request, channel: StreamChannel, max_body: int) -> None:
    """Stream the client's body to the agent as credit allows; bounded by the window."""
    sent = 0
    try:
        async for chunk in request.content.iter_chunked(channel.max_chunk):
            sent += len(chunk)
            if max_body and sent > max_body:
                await channel.reset(ResetCode.TOO_LARGE, f"body exceeds {max_body} bytes")
                return
            await channel.send_body(chunk)
        await channel.send_end()
    except StreamError:
        return  # the stream was reset or the tunnel closed; the response side reports it
    except ConnectionResetError:
        await _cancel(channel)


async def _send_response(
    state: RelayState,
    request: web.Request,
    channel: StreamChannel,
    head: RespHead,
    *,
    head_only: bool,
) -> web.StreamResponse:
    small = head.end and not head_only
    headers = response_headers_for_client(head.headers, keep_length=not small)
    try:
        check_fields(headers)
    except HeaderRefused as exc:
        await channel.reset(ResetCode.INTERNAL, "response header refused")
        state.metrics.proxy_errors.add(1, {"reason": "upstream_error"})
        return json_error(502, "upstream_error", f"bad response header from the host: {exc}")
    if small:
        # Whole small body in the head frame: a plain response, length set by aiohttp.
        return web.Response(status=head.status, body=head.chunk, headers=CIMultiDict(headers))
    response = web.StreamResponse(status=head.status, headers=CIMultiDict(headers))
    await response.prepare(request)
    request[TRAFFIC].status = head.status
    try:
        await _stream_body(response, channel, head)
    except StreamError as exc:
        # Headers are out: the only honest signal left is to cut the connection, so the
        # client sees a truncated body rather than a complete-looking one.
        state.metrics.proxy_errors.add(1, {"reason": "body_interrupted"})
        state.log.warning("proxy.body_interrupted", sid=channel.sid, error=str(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def _stream_body(
    response: web.StreamResponse, channel: StreamChannel, head: RespHead
) -> None:
    """Copy the response body to the client, granting credit as the socket takes it."""
    if head.chunk:
        await response.write(head.chunk)
        await channel.consumed(len(head.chunk))
    end = head.end
    while not end:
        frame = await channel.receive()
        if not isinstance(frame, Data):
            raise StreamReset(ResetCode.INTERNAL, f"unexpected {type(frame).__name__} in body")
        if frame.chunk:
            await response.write(frame.chunk)
            await channel.consumed(len(frame.chunk))
        end = frame.end
