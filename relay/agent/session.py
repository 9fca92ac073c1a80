"""One tunnel connection from the agent's side: handshake, streams, pings, silence."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from relay.agent.exchange import UpstreamExchange
from relay.errors import MalformedFrame, ProtocolError, StreamError
from relay.wire.connection import TunnelConnection
from relay.wire.protocol import (
    PROTOCOL_VERSION,
    Drain,
    Frame,
    FrameCodec,
    Hello,
    Limits,
    ReqHead,
    Reset,
    ResetCode,
    Welcome,
    WsOpen,
)

if TYPE_CHECKING:
    import aiohttp
    from structlog.typing import FilteringBoundLogger

    from relay.agent.observe import RequestTap
    from relay.agent.upstream import Upstream

__all__ = ["SILENCE", "AgentSession", "HandshakeClosed", "handshake"]

#: Our own close code when the relay went silent (no frame within the silence timeout).
SILENCE = 4008


async def handshake(
    ws: aiohttp.ClientWebSocketResponse,
    *,
    agent_version: str,
    limits: Limits,
    timeout: float,
    standby: bool = False,
) -> Welcome:
    """Send Hello and wait for Welcome; a close instead of Welcome raises with its code."""
    codec = FrameCodec(max_frame=limits.max_frame, max_header_bytes=limits.max_header_bytes)
    await ws.send_bytes(codec.message(Hello(PROTOCOL_VERSION, agent_version, limits, standby)))
    msg = await ws.receive(timeout=timeout)
    if msg.type.name != "BINARY":
        raise HandshakeClosed(ws.close_code, str(msg.extra or ""))
    welcome, rest = codec.decode_opening(msg.data, Welcome)
    if rest:
        # The relay opens no stream before the Welcome is through: nothing may follow it.
        raise MalformedFrame(f"expected a lone Welcome, got {len(rest)} more frames")
    return welcome


class HandshakeClosed(Exception):
    """The relay closed the socket instead of welcoming us."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed during handshake ({code}): {reason}")
        self.code = code
        self.reason = reason


class AgentSession(TunnelConnection):
    """Serves the streams the relay opens on one tunnel."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        welcome: Welcome,
        upstream: Upstream,
        *,
        local_limits: Limits,
        log: FilteringBoundLogger,
        tap: RequestTap | None = None,
    ) -> None:
        super().__init__(ws, local_limits=local_limits, peer_limits=welcome.limits, log=log)
        self.welcome = welcome
        self.upstream = upstream
        self.tap = tap  # request lines and the inspector; None when neither is on
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.max_sid = 0
        self.drain_requested = asyncio.Event()

    def dispatch_stream_frame(self, frame: Any) -> None:  # noqa: ANN401 - one of STREAM_FRAMES
        """Open streams on ReqHead/WsOpen; cancel the upstream call on Reset."""
        if type(frame) is ReqHead or type(frame) is WsOpen:
            self._open(frame)
            return
        super().dispatch_stream_frame(frame)
        if type(frame) is Reset:
            task = self.tasks.get(frame.sid)
            if task is not None:
                task.cancel()  # aborts the upstream request: the service sees the disconnect

    def _open(self, frame: ReqHead | WsOpen) -> None:
        if frame.sid <= self.max_sid:
            raise ProtocolError(f"relay reused stream id {frame.sid}")
        self.max_sid = frame.sid
        if self.codec.headers_too_large(frame):
            self.log.warning("agent.headers_too_large", sid=frame.sid)
            self.queue(Reset(frame.sid, int(ResetCode.HEADERS_TOO_LARGE), "headers too large"))
            return
        if len(self.streams) >= self.local_limits.max_streams:
            self.queue(Reset(frame.sid, int(ResetCode.REFUSED), "agent at its stream limit"))
            return
        if type(frame) is ReqHead:
            # Plain HTTP: served by callbacks on the pooled upstream client, no task.
            UpstreamExchange(self, frame, self.upstream.pool, self.tap)
            return
        channel = self.open_channel(frame.sid)
        channel.deliver(frame)
        seen = self.tap.begin_websocket(frame) if self.tap is not None else None
        task = self._spawn(frame.sid, self.upstream.serve_websocket(channel, seen))
        task.add_done_callback(lambda _t: channel.close())

    def _spawn(self, sid: int, coro: Any) -> asyncio.Task[None]:  # noqa: ANN401 - a coroutine
        task: asyncio.Task[None] = asyncio.create_task(self._guard(sid, coro))
        self.tasks[sid] = task
        task.add_done_callback(lambda _t: self.tasks.pop(sid, None))
        return task

    async def _guard(self, sid: int, coro: Any) -> None:  # noqa: ANN401 - a coroutine
        try:
            await coro
        except StreamError as exc:
            self.log.debug("agent.stream_ended", sid=sid, error=str(exc))
        except Exception as exc:
            # A bug in one stream's task ends that stream alone, and the relay hears of it
            # at once (502) instead of holding the stream until its request timeout.
            self.log.exception("agent.stream_failed", sid=sid, error=repr(exc))
            if self.close_code is None:
                self.queue(Reset(sid, int(ResetCode.INTERNAL), "the agent failed"))

    def on_unknown_stream(self, frame: Any) -> None:  # noqa: ANN401 - one of STREAM_FRAMES
        """Late frames for finished streams are ignored; others break the protocol."""
        if frame.sid <= self.max_sid:
            return
        raise ProtocolError(f"relay sent {type(frame).__name__} on unopened stream {frame.sid}")

    def on_control_frame(self, frame: Frame) -> None:
        """Drain asks us to move; pings are answered by the base class."""
        if isinstance(frame, Drain):
            self.log.info("agent.drain_requested", deadline=frame.deadline)
            self.drain_requested.set()
            return
        super().on_control_frame(frame)

    async def keepalive(self, interval: float, silence_timeout: float) -> None:
        """Ping the relay; close the socket when nothing arrived for ``silence_timeout``."""
        tick = min(interval, silence_timeout / 3)
        # The first Ping goes at once: its Pong times the round trip (see TunnelConnection.rtt).
        await self.send(self.ping())
        next_ping = self.loop.time() + interval
        while self.close_code is None:
            await asyncio.sleep(tick)
            now = self.loop.time()
            silent = now - self.last_frame_at
            if silent >= silence_timeout:
                self.log.warning("agent.relay_silent", silent_s=round(silent, 3))
                self.close_code = SILENCE
                self.close_reason = "relay silent"
                self.fail_streams_silently()
                return
            if now >= next_ping:
                next_ping = now + interval
                await self.send(self.ping())

    def fail_streams_silently(self) -> None:
        """Cancel every stream task; the socket is presumed dead."""
        for task in list(self.tasks.values()):
            task.cancel()

    async def finish(self, grace: float) -> None:
        """Let in-flight streams end (up to ``grace``), then cancel the rest."""
        if self.tasks:
            _done, pending = await asyncio.wait(list(self.tasks.values()), timeout=grace)
            for task in pending:
                task.cancel()
