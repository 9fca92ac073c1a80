"""A burst of WebSocket messages written to one socket in one write.

aiohttp writes each message with a transport write of its own, one system call each: that
was most of what relaying a WebSocket cost, since small messages arrive in bursts (the
tunnel carries a stream's messages batched). :class:`BatchWriter` frames a burst itself
(RFC 6455 section 5.2; masked when the socket is a client's) and hands it to aiohttp's
transport at once.

It reaches into aiohttp's writer for its transport and protocol, which aiohttp does not
expose; :meth:`BatchWriter.of` answers None when they are not there or when the socket
compresses (permessage-deflate), and the caller then sends message by message.
``tests/unit/test_ws_batch.py`` fails if the installed aiohttp stops fitting.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiohttp._websocket.helpers import websocket_mask
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_websocket import WebSocketWriter

if TYPE_CHECKING:
    import asyncio

    from relay.wire.protocol import WsMsg

__all__ = ["BatchWriter"]

_BINARY: Final = 0x82  # FIN + binary opcode
_TEXT: Final = 0x81  # FIN + text opcode
_MASKED: Final = 0x80
_LEN16: Final = struct.Struct("!BBH")
_LEN64: Final = struct.Struct("!BBQ")


class _Socket(Protocol):
    @property
    def closed(self) -> bool:
        """Whether a close was sent or received."""


class BatchWriter:
    """Writes bursts of messages to one aiohttp WebSocket (server or client side)."""

    __slots__ = ("_mask", "_protocol", "_socket", "_transport")

    def __init__(
        self, socket: _Socket, transport: asyncio.Transport, protocol: BaseProtocol, *, mask: bool
    ) -> None:
        self._socket = socket
        self._transport = transport
        self._protocol = protocol
        self._mask = mask

    @classmethod
    def of(cls, ws: Any) -> BatchWriter | None:  # noqa: ANN401 - either of aiohttp's sockets
        """A writer for ``ws``; None when messages must go through aiohttp one by one."""
        writer = getattr(ws, "_writer", None)
        if not isinstance(writer, WebSocketWriter) or writer.compress:
            return None
        protocol = writer.protocol
        if not isinstance(protocol, BaseProtocol) or writer.transport is None:
            return None
        return cls(ws, writer.transport, protocol, mask=writer.use_mask)

    def write(self, messages: list[WsMsg]) -> int:
        """Write ``messages`` (a stream's burst) in one transport write; their payload bytes.

        The bytes counted are those that came through the tunnel (the credit they took),
        even where a peer's invalid text grew on the way out.
        Raises ConnectionResetError once the socket is closing, as aiohttp's send does.
        """
        if self._socket.closed or self._transport.is_closing():
            raise ConnectionResetError("cannot write to a closing WebSocket")
        keys = _keys(len(messages)) if self._mask else b""
        parts: list[bytes | bytearray] = []
        size = 0
        for i, message in enumerate(messages):
            size += len(message.payload)
            if message.binary:
                self._frame(parts, _BINARY, message.payload, keys, i)
            else:
                self._frame(parts, _TEXT, _valid_text(message.payload), keys, i)
        self._transport.writelines(parts)
        return size

    def write_parts(self, parts: list[Any], size: int) -> None:
        """Write one binary message of ``size`` bytes, given as ``parts``, in one write.

        The parts (bytes or views) go to the transport as they are, behind the header;
        masked (a client's socket), they are first joined into one buffer, masked in
        place. Raises ConnectionResetError once the socket is closing, as aiohttp's
        send does.
        """
        if self._socket.closed or self._transport.is_closing():
            raise ConnectionResetError("cannot write to a closing WebSocket")
        if self._mask:
            key = _keys(1)
            payload = bytearray().join(parts)
            websocket_mask(key, payload)
            self._transport.writelines((_header(_BINARY, size, _MASKED) + key, payload))
        else:
            self._transport.writelines([_header(_BINARY, size, 0), *parts])

    @property
    def writable(self) -> bool:
        """Whether a write now would neither fail nor grow a buffer over its high mark."""
        return not (
            self._protocol.writing_paused or self._transport.is_closing() or self._socket.closed
        )

    def _frame(
        self, parts: list[bytes | bytearray], first: int, payload: bytes, keys: bytes, i: int
    ) -> None:
        """Append one frame's header and payload to ``parts``."""
        header = _header(first, len(payload), _MASKED if self._mask else 0)
        if self._mask:
            # RFC 6455 5.3: a fresh, unpredictable key per frame.
            key = keys[4 * i : 4 * i + 4]
            masked = bytearray(payload)
            websocket_mask(key, masked)
            parts.append(header + key)
            parts.append(masked)
        else:
            parts.append(header)
            parts.append(payload)

    async def drain(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark."""
        if self._protocol.writing_paused:
            await self._protocol._drain_helper()  # noqa: SLF001 - what aiohttp's own send awaits


class _KeyPool:
    """Masking keys from the system's strong source, drawn 4 KiB at a time.

    A system call per burst would cost about as much as the writes it saves.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        # A forked child must not hand out its parent's keys again.
        os.register_at_fork(after_in_child=self.clear)

    def clear(self) -> None:
        """Forget the keys drawn so far."""
        self._pool = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        """``n`` bytes never handed out before."""
        if self._at + n > len(self._pool):
            self._pool = os.urandom(max(4096, n))
            self._at = 0
        start = self._at
        self._at = start + n
        return self._pool[start : start + n]


_KEY_POOL: Final = _KeyPool()


def _keys(frames: int) -> bytes:
    """One fresh 4-byte masking key per frame (RFC 6455 5.3), ``frames`` of them."""
    return _KEY_POOL.take(4 * frames)


def _header(first: int, n: int, flag: int) -> bytes:
    """A frame header (RFC 6455 5.2) for ``n`` payload bytes; ``flag``: the mask bit."""
    if n < 126:
        return bytes((first, n | flag))
    if n < 65536:
        return _LEN16.pack(first, 126 | flag, n)
    return _LEN64.pack(first, 127 | flag, n)


def _valid_text(payload: bytes) -> bytes:
    """A text message's payload as valid UTF-8 (a peer's invalid bytes replaced)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("utf-8", errors="replace").encode("utf-8")
    return payload
