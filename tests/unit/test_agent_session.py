"""The agent's session: a failing stream task ends its stream alone, and says so."""

from __future__ import annotations

import asyncio

import structlog

from relay.agent.session import AgentSession
from relay.wire.protocol import FrameCodec, Limits, Reset, ResetCode, Welcome, WsOpen

LIMITS = Limits(max_frame=64 * 1024)


class RecordingSocket:
    """A relay that reads everything the agent sends and sends nothing itself."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.close_code = None

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        self.sent.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


class BrokenUpstream:
    """An upstream whose WebSocket handling has a bug."""

    async def serve_websocket(self, channel, seen=None) -> None:
        raise RuntimeError("a bug in the agent")


async def test_a_bug_in_a_stream_task_resets_that_stream_and_keeps_the_tunnel():
    ws = RecordingSocket()
    welcome = Welcome("m1", 1, "h_1", "abc", 10.0, LIMITS)
    session = AgentSession(
        ws,  # type: ignore[arg-type]
        welcome,
        BrokenUpstream(),  # type: ignore[arg-type]
        local_limits=LIMITS,
        log=structlog.get_logger(),
    )
    session.dispatch_stream_frame(WsOpen(1, "/ws", [], []))
    task = session.tasks[1]
    await task  # the guard took the error: nothing escapes the task

    codec = FrameCodec.shared(LIMITS.max_frame, LIMITS.max_header_bytes)

    async def reset_sent() -> list[Reset]:
        while True:
            frames = [f for m in ws.sent for f in codec.decode(m)]
            resets = [f for f in frames if isinstance(f, Reset)]
            if resets:
                return resets
            await asyncio.sleep(0.01)

    (reset,) = await asyncio.wait_for(reset_sent(), 5)
    assert (reset.sid, reset.code) == (1, int(ResetCode.INTERNAL))
    assert session.close_code is None  # the tunnel lives on
    assert not ws.closed
