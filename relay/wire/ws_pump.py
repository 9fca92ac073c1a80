"""WebSocket messages carried both ways, with one teardown and one close-code rule.

Used wherever a WebSocket is relayed: a client's WebSocket and its tunnel stream on the
relay, the upstream's WebSocket and the same stream on the agent
(:func:`pump_to_stream`), and socket to socket between machines and in ``relay edge``
(:func:`pump_sockets`). Either direction ending ends the pump; the other direction gets
a moment (:data:`CLOSE_GRACE`) for the close handshake to cross, then is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp

from relay.errors import StreamError
from relay.logs import get_logger
from relay.wire.protocol import WsClose, WsMsg
from relay.wire.ws_batch import BatchWriter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from relay.wire.channel import StreamChannel
    from relay.wire.protocol import Frame


__all__ = [
    "CLOSE_GRACE",
    "close_reason",
    "pump_sockets",
    "pump_to_stream",
    "sendable_code",
]

#: How long the other direction may take to pass a close on once one direction ended.
CLOSE_GRACE: Final = 1.0
#: aiohttp's code when the socket ended without a close frame (RFC 6455's "abnormal").
_ABNORMAL: Final = 1006
#: What aiohttp's ``async for`` over a socket stops at.
_ENDED: Final = frozenset(
    {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED}
)
# Registered codes an endpoint may send (RFC 6455 7.4.1; 1004-1006 and 1015 never are).
_MAX_REASON: Final = 123  # bytes of a close reason (RFC 6455 5.5: control frames' 125)
_SENDABLE: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})
# Messages carried from a socket between two turns of the event loop at most: receive()
# does not yield while messages wait, and a client's read of tiny messages (37,000 in
# 256 KiB) held the loop, every other host's requests waiting behind it.
_TURN: Final = 256


class Socket(Protocol):
    """What the pump needs of aiohttp's server and client WebSockets."""

    @property
    def close_code(self) -> int | None:
        """The peer's close code, once closed."""

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        """Messages until the socket closes."""

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        """The next message (CLOSE, CLOSING or CLOSED once it ends)."""

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        """Send a binary message."""

    async def send_str(self, data: str, compress: int | None = None) -> None:
        """Send a text message."""

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Close with ``code``."""


def sendable_code(code: int | None) -> int:
    """A close code fit to put on the wire (markers like 1005/1006 become 1000)."""
    if code is not None and (code in _SENDABLE or 3000 <= code <= 4999):
        return code
    return 1000


def close_reason(reason: str) -> bytes:
    """A close reason within RFC 6455's 123 bytes, cut between characters.

    It must stay valid UTF-8: a client fails the connection (1007) over one that is not,
    and the close code is lost.
    """
    data = reason.encode()
    if len(data) <= _MAX_REASON:
        return data
    return data[:_MAX_REASON].decode(errors="ignore").encode()


async def pump_to_stream(ws: Socket, channel: StreamChannel) -> None:
    """Carry ``ws``'s messages to the tunnel stream and the stream's back to ``ws``.

    Messages that came through the tunnel together leave together, in one write (see
    relay/wire/ws_batch.py): a write per message was most of a WebSocket's relaying cost.
    They are written as their tunnel message is dispatched when the socket can take them
    (``channel.writer``), else by this task.
    """
    outbound = asyncio.get_running_loop().create_task(_socket_to_stream(ws, channel))
    batch = BatchWriter.of(ws)
    channel.writer = batch
    # No await while an exception is being handled here, nor in a finally block: this
    # module is compiled (relay/hot_path.py says why).
    tunnel_gone = False
    try:
        await _stream_to_socket(ws, channel, batch)
    except StreamError:
        tunnel_gone = True
    except ConnectionResetError:
        # ``ws`` closed while the peer's messages were on their way (its own close, read
        # by the other direction, is what the stream is told): they have nowhere to go.
        pass
    except BaseException:
        _abandon(outbound)  # cancelled or failed ourselves: the other direction goes at once
        raise
    finally:
        channel.writer = None
    if tunnel_gone:
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"tunnel closed")
    await _wind_down(outbound)


async def pump_sockets(a: Socket, b: Socket) -> None:
    """Copy messages both ways between two sockets until one closes; pass its code on."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_socket_to_socket(a, b)), loop.create_task(_socket_to_socket(b, a))]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        await _wind_down(task)


async def _socket_to_stream(ws: Socket, channel: StreamChannel) -> None:
    try:
        # receive() itself rather than ``async for``: aiohttp's __anext__, a coroutine
        # around it, was ~5 % of the relay's CPU in a WebSocket echo. Same ending: a
        # close ends it, an error message is skipped (the next receive says closed).
        carried = 0
        while True:
            carried += 1
            if carried == _TURN:
                carried = 0
                await asyncio.sleep(0)
            msg = await ws.receive()
            kind = msg.type
            if kind is aiohttp.WSMsgType.BINARY:
                await channel.send_ws(binary=True, payload=msg.data)
            elif kind is aiohttp.WSMsgType.TEXT:
                await channel.send_ws(binary=False, payload=msg.data.encode())
            elif kind in _ENDED:
                break
    finally:
        if not channel.state.reset:
            code = ws.close_code if ws.close_code is not None else _ABNORMAL
            with contextlib.suppress(StreamError):
                channel.send_now(WsClose(channel.sid, code, ""))


async def _stream_to_socket(ws: Socket, channel: StreamChannel, batch: BatchWriter | None) -> None:
    while True:
        frame: Frame | None = await channel.receive()
        if type(frame) is WsMsg and batch is not None:
            burst = []
            while type(frame) is WsMsg:
                burst.append(frame)
                frame = channel.receive_ready()
            size = batch.write(burst)
            await batch.drain()
            await channel.consumed(size)
        elif type(frame) is WsMsg:
            if frame.binary:
                await ws.send_bytes(frame.payload)
            else:
                await ws.send_str(frame.payload.decode("utf-8", errors="replace"))
            await channel.consumed(len(frame.payload))
        if type(frame) is WsClose:
            # Nothing but the close goes to the socket now: aiohttp's client socket says
            # it is open until its reading task has let go, and a message the peer sent
            # after its close would be written straight through ahead of the close frame.
            channel.writer = None
            await ws.close(code=sendable_code(frame.code), message=close_reason(frame.reason))
            return


async def _socket_to_socket(src: Socket, dst: Socket) -> None:
    carried = 0  # the loop turns every _TURN messages, as in _socket_to_stream
    async for msg in src:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        carried += 1
        if carried == _TURN:
            carried = 0
            await asyncio.sleep(0)
    await dst.close(code=sendable_code(src.close_code))


_log: Final = get_logger("ws_pump")

# A direction ends by its socket or stream going away: what it raises then is expected.
_ENDINGS: Final = (StreamError, aiohttp.ClientError, OSError)


def _abandon(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` without waiting for it; what it raised is still looked at.

    It may have ended already with an error of its own, which asyncio would otherwise
    report as never retrieved, outside the structured log.
    """
    task.cancel()
    task.add_done_callback(_collect)


def _collect(task: asyncio.Task[None]) -> None:
    """Log what an abandoned direction raised, unless it is how directions end."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, _ENDINGS):
        _log.error("ws_pump.direction_failed", error=repr(error), exc_info=error)


async def _wind_down(task: asyncio.Task[None]) -> None:
    """Let ``task`` finish within the close grace, else cancel it; never raise from it."""
    if not task.done():
        with contextlib.suppress(TimeoutError, *_ENDINGS):
            await asyncio.wait_for(asyncio.shield(task), CLOSE_GRACE)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *_ENDINGS):
        await task
