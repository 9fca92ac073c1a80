"""Tunnel wire protocol: frames and their MessagePack codec (pure, no I/O).

One WebSocket carries the whole tunnel; every WebSocket message is a MessagePack array
of one or more frames, each a msgspec ``array_like`` struct tagged by a small integer so
a frame costs a few bytes of framing. Streams are multiplexed by ``sid``; only the relay
opens streams, so the relay numbers them (1, 2, 3, ...).

Connection set-up (agent first)::

    agent -> relay   Hello(version, agent_version, limits, standby)
    relay -> agent   Welcome(machine_id, epoch, host_id, slug, ping_interval, limits,
                             url, name)

An HTTP exchange::

    relay -> agent   ReqHead(sid, method, target, headers, body, length, trace, chunk, end)
    relay -> agent   Data(sid, chunk, end)*          request body, when not inlined
    agent -> relay   RespHead(sid, status, headers, chunk, end)
    agent -> relay   Data(sid, chunk, end)*          response body, when not inlined
    either           Window(sid, increment)          credit for the other direction
    either           Reset(sid, code, reason)        abort the stream (client gone, upstream error)

``chunk``/``end`` on the head frames let a small body ride in the head frame, so a small
GET costs exactly two frames. ``Data(end=True)`` is the stream's end marker (the design
sketch's ``End``); it may carry the last chunk.

Flow control works like HTTP/2: each direction of a stream starts with the receiver's
``initial_window`` bytes of credit (from its ``limits``); the sender stops at zero and the
receiver sends ``Window`` as its consumer takes data. ``Data`` chunks, inline chunks of
head frames and ``WsMsg`` payloads count against the window; heads themselves do not. A
receiver may grant more than was consumed: a stream's window grows, up to the receiver's
``max_window``, while the window rather than the consumer sets the pace (a long round
trip); a sender takes any credit up to 2**31 - 1.

A proxied WebSocket::

    relay -> agent   WsOpen(sid, target, headers, protocols, trace)
    agent -> relay   WsAccept(sid, protocol) | RespHead(...)   (refused upgrade)
    either           WsMsg(sid, binary, payload)*
    either           WsClose(sid, code, reason)

Liveness and drain: ``Ping(t)``/``Pong(t)`` either way; ``Drain(deadline)`` from the relay
tells the agent to open a new tunnel now, before this one closes with 4001.
"""

from __future__ import annotations

import enum
import functools
import struct
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar, cast, final

import msgspec

from relay.errors import FrameTooLarge, MalformedFrame
from relay.wire.http1 import header_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "PROTOCOL_VERSION",
    "Body",
    "CloseCode",
    "Data",
    "Drain",
    "Frame",
    "FrameCodec",
    "Hello",
    "Limits",
    "Ping",
    "Pong",
    "ReqHead",
    "Reset",
    "ResetCode",
    "RespHead",
    "Welcome",
    "Window",
    "WsAccept",
    "WsClose",
    "WsMsg",
    "WsOpen",
]

PROTOCOL_VERSION: Final = 1

StreamId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Credit = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Headers = list[tuple[str, str]]
#: Unix time: finite and plausible (NaN and infinities are refused on decode).
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=1e11)]


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the tunnel itself."""

    NORMAL = 1000
    DRAIN = 4001
    REPLACED = 4002
    UNAUTHORIZED = 4003
    PROTOCOL_ERROR = 4004
    MISSED_PONG = 4008


class ResetCode(enum.IntEnum):
    """Why a stream was reset."""

    CANCEL = 1  # the client went away or no longer wants the response
    TIMEOUT = 2  # response headers did not arrive in time
    UPSTREAM_ERROR = 3  # the local service failed mid-response
    REFUSED = 4  # too many streams, or the tunnel is going away
    FLOW_CONTROL = 5  # the peer sent more than its window allowed
    TOO_LARGE = 6  # a header or body limit was exceeded
    INTERNAL = 7  # a bug on the sending side, or the peer broke the stream's rules
    HEADERS_TOO_LARGE = 8  # the request's headers exceed the receiver's header limit


class Body(enum.IntEnum):
    """How a request body is framed."""

    NONE = 0
    SIZED = 1  # Content-Length known: ``length`` bytes follow
    CHUNKED = 2  # length unknown until ``end``


class Limits(msgspec.Struct, gc=False, array_like=True, frozen=True):
    """What one side accepts; each side announces its own."""

    max_frame: Annotated[int, msgspec.Meta(ge=1024)] = 1 << 20
    max_streams: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_header_bytes: Annotated[int, msgspec.Meta(ge=256)] = 64 * 1024
    initial_window: Annotated[int, msgspec.Meta(ge=1024, le=2**31 - 1)] = 1024 * 1024
    max_body: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: unlimited
    # The most one stream's window grows to (told for information: credit is the
    # receiver's to give). A trailing field: peers that predate it skip it.
    max_window: Annotated[int, msgspec.Meta(ge=1024, le=2**31 - 1)] = 16 * 1024 * 1024

    def clamped(self, ours: Limits) -> Limits:
        """These (a peer's announced) limits, none above ``ours``.

        What an agent announces sizes the relay's own queues and frames; a hostile one
        must not be able to set the relay's memory bound.
        """
        clamped = Limits(
            max_frame=min(self.max_frame, ours.max_frame),
            max_streams=min(self.max_streams, ours.max_streams),
            max_header_bytes=min(self.max_header_bytes, ours.max_header_bytes),
            initial_window=min(self.initial_window, ours.initial_window),
            max_body=self.max_body,
            max_window=min(self.max_window, ours.max_window),
        )
        # Most agents end up with exactly ours: one shared object, not one per tunnel.
        return ours if clamped == ours else clamped


#: An agent's version string is stored and shown: bounded like every field from an agent.
AgentVersion = Annotated[str, msgspec.Meta(max_length=64)]


@final
class Hello(msgspec.Struct, gc=False, tag=1, array_like=True, frozen=True):
    """First frame from the agent.

    ``standby``: connect only if no other connection holds the host. An agent that was
    replaced (4002) comes back as a standby, so two agents with one token never flap.
    """

    version: int
    agent_version: AgentVersion
    limits: Limits
    standby: bool = False


@final
class Welcome(msgspec.Struct, gc=False, tag=2, array_like=True, frozen=True):
    """The relay's answer to Hello once the host is authenticated and owned.

    ``url`` (the host's public URL) and ``name`` came later: as trailing fields with
    defaults they cost an old agent nothing (msgspec skips extra trailing array items)
    and an old relay's shorter Welcome still decodes here (empty strings).
    """

    machine_id: str
    epoch: int
    host_id: str
    slug: str
    ping_interval: float
    limits: Limits
    url: str = ""
    name: str = ""


@final
class ReqHead(msgspec.Struct, gc=False, tag=3, array_like=True, frozen=True):
    """Opens an HTTP stream (relay to agent)."""

    sid: StreamId
    method: str
    target: str
    headers: Headers
    body: Body = Body.NONE
    length: int = -1
    trace: str = ""
    chunk: bytes = b""
    end: bool = True


@final
class RespHead(msgspec.Struct, gc=False, tag=4, array_like=True, frozen=True):
    """Response status and headers (agent to relay)."""

    sid: StreamId
    status: Annotated[int, msgspec.Meta(ge=100, le=999)]
    headers: Headers
    chunk: bytes = b""
    end: bool = False


@final
class Data(msgspec.Struct, gc=False, tag=5, array_like=True, frozen=True):
    """A body chunk; ``end`` closes this direction of the stream."""

    sid: StreamId
    chunk: bytes
    end: bool = False


@final
class Reset(msgspec.Struct, gc=False, tag=6, array_like=True, frozen=True):
    """Aborts a stream in both directions."""

    sid: StreamId
    code: int
    reason: str = ""


@final
class Window(msgspec.Struct, gc=False, tag=7, array_like=True, frozen=True):
    """Grants the peer ``increment`` more bytes of credit on ``sid``."""

    sid: StreamId
    increment: Credit


@final
class WsOpen(msgspec.Struct, gc=False, tag=8, array_like=True, frozen=True):
    """Opens a proxied WebSocket stream (relay to agent)."""

    sid: StreamId
    target: str
    headers: Headers
    protocols: list[str]
    trace: str = ""


@final
class WsAccept(msgspec.Struct, gc=False, tag=9, array_like=True, frozen=True):
    """The upstream accepted the WebSocket; ``protocol`` is the chosen subprotocol."""

    sid: StreamId
    protocol: str | None = None


@final
class WsMsg(msgspec.Struct, gc=False, tag=10, array_like=True, frozen=True):
    """One WebSocket message; text travels as UTF-8 bytes with ``binary`` false."""

    sid: StreamId
    binary: bool
    payload: bytes


@final
class WsClose(msgspec.Struct, gc=False, tag=11, array_like=True, frozen=True):
    """The WebSocket closed on one side with this code."""

    sid: StreamId
    code: Annotated[int, msgspec.Meta(ge=0, le=4999)]
    reason: str = ""


@final
class Ping(msgspec.Struct, gc=False, tag=12, array_like=True, frozen=True):
    """Application-level ping; the peer answers Pong with the same ``t``.

    One Pong per message: a message holding several Pings is answered for its last.
    """

    t: Timestamp


@final
class Pong(msgspec.Struct, gc=False, tag=13, array_like=True, frozen=True):
    """Answer to Ping."""

    t: Timestamp


@final
class Drain(msgspec.Struct, gc=False, tag=14, array_like=True, frozen=True):
    """The relay is going away at ``deadline`` (unix time): reconnect now."""

    deadline: Timestamp


Frame = (
    Hello
    | Welcome
    | ReqHead
    | RespHead
    | Data
    | Reset
    | Window
    | WsOpen
    | WsAccept
    | WsMsg
    | WsClose
    | Ping
    | Pong
    | Drain
)


def body_piece(chunk: bytes, start: int, stop: int) -> Any:  # noqa: ANN401 - see below
    """``chunk[start:stop]`` for a Data frame about to be sent, without copying it.

    The encoder copies a frame's chunk into its message anyway, and msgspec encodes any
    buffer as bin: slices copied first were ~8 % of the relay's CPU in an upload (bodies
    arrive in reads of up to 256 KiB and leave in chunks of 128 KiB). Typed Any: the
    field says ``bytes`` for the decoder (whose frames hold bytes, never views that would
    keep whole messages alive), and compiled code checks what a ``bytes`` holds. A
    bytearray is copied: a view of it would see later writes, and keep it from growing.
    So is a piece under a quarter of its chunk: a view keeps all of the chunk alive while
    the send queue counts only the piece (a peer granting credit byte by byte would have
    each stream's queued byte hold a whole 256 KiB read past the queue's limits); a read's
    pieces of ``max_chunk`` stay views, and what is copied is under a quarter of one.
    """
    if type(chunk) is bytes and 4 * (stop - start) >= len(chunk):
        return memoryview(chunk)[start:stop]
    return bytes(chunk[start:stop])


#: Data chunks this long or longer are written from where they lie (FrameCodec.pack_parts).
WHOLE_CHUNK: Final = 16 * 1024

# MessagePack pieces of a Data frame written around its chunk: a 4-element array, the
# tag, then the stream id, the chunk's bin header, and ``end``.
_DATA_HEAD: Final = bytes((0x94, 5))
_TRUE: Final = b"\xc3"
_FALSE: Final = b"\xc2"
_U8: Final = struct.Struct(">BB")
_U16: Final = struct.Struct(">BH")
_U32: Final = struct.Struct(">BI")
_U64: Final = struct.Struct(">BQ")


def _array_header(n: int) -> bytes:
    """MessagePack's shortest array header for ``n`` elements."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return _U16.pack(0xDC, n)
    return _U32.pack(0xDD, n)


def _uint(v: int) -> bytes:
    """MessagePack's shortest form of a non-negative integer."""
    if v < 128:
        return bytes((v,))
    if v < 1 << 8:
        return _U8.pack(0xCC, v)
    if v < 1 << 16:
        return _U16.pack(0xCD, v)
    if v < 1 << 32:
        return _U32.pack(0xCE, v)
    return _U64.pack(0xCF, v)


def _bin_header(n: int) -> bytes:
    """MessagePack's shortest bin header for ``n`` bytes."""
    if n < 1 << 8:
        return _U8.pack(0xC4, n)
    if n < 1 << 16:
        return _U16.pack(0xC5, n)
    return _U32.pack(0xC6, n)


#: Upper bound of a Data frame's encoding beyond its chunk (array, tag, sid, bin header, end),
#: and of a WsMsg's beyond its payload (the same fields).
DATA_OVERHEAD: Final = 24

OpeningT = TypeVar("OpeningT", Hello, Welcome)

# Frame classes are final, so code on the hot path tests ``type(frame)``: a
# failed isinstance() against a msgspec Struct class goes through its metaclass's
# __instancecheck__ (~70 ns), and a WsMsg tested against the nine stream frame classes
# cost ~470 ns where a set lookup costs ~20.

#: Frames that carry headers (checked against the header limit).
HEAD_FRAMES: Final[frozenset[type]] = frozenset({ReqHead, RespHead, WsOpen})

#: Frames that belong to a stream (carry ``sid``).
STREAM_FRAMES: Final[frozenset[type]] = frozenset(
    {ReqHead, RespHead, Data, Reset, Window, WsOpen, WsAccept, WsMsg, WsClose}
)


class FrameCodec:
    """Encodes frames and packs them into messages; decodes messages into valid frames.

    A WebSocket message is a MessagePack array of one or more frames: frames sent in the
    same event-loop turn share one message, which saves a syscall and a WebSocket header
    per frame under load. Frames are encoded one by one (so their sizes are known when
    packing) and joined behind an array header.

    Decoding enforces the message-size limit and raises only
    :class:`relay.errors.ProtocolError` subclasses, whatever the input; the header-size
    limit is a stream's business (:meth:`headers_too_large`).
    """

    __slots__ = ("_decoder", "_encoder", "max_frame", "max_header_bytes")

    def __init__(self, *, max_frame: int = 1 << 20, max_header_bytes: int = 64 * 1024) -> None:
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_str_subclass)
        self._decoder = msgspec.msgpack.Decoder(list[Frame])
        self.max_frame = max_frame
        self.max_header_bytes = max_header_bytes

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def shared(max_frame: int, max_header_bytes: int) -> FrameCodec:
        """One codec per pair of limits, shared by every connection that uses them.

        A codec holds no per-connection state; sharing saves an encoder and a decoder
        per tunnel on a relay holding tens of thousands.
        """
        return FrameCodec(max_frame=max_frame, max_header_bytes=max_header_bytes)

    def encode(self, frame: Frame) -> bytes:
        """Encode one frame (not yet a message: see :meth:`pack`)."""
        return self._encoder.encode(frame)

    def pack(self, items: Sequence[Frame | msgspec.Raw]) -> bytes:
        """One message (a MessagePack array) of frames and already-encoded frames (Raw).

        Body frames are passed as structs, so their chunks are copied once, straight
        into the message; small frames are encoded when queued (their size is known).
        """
        return self._encoder.encode(items)

    def pack_parts(self, items: Sequence[Frame | msgspec.Raw]) -> tuple[list[Any], int]:
        """The message :meth:`pack` makes, as pieces to write in order, and its length.

        Chunks of :data:`WHOLE_CHUNK` bytes or more are pieces of their own, written from
        where they lie rather than copied into the message: that copy (and the encoder's
        growing its buffer) was ~10 % of the relay's CPU in an upload. The pieces are the
        bytes :meth:`pack` gives (MessagePack's shortest forms, as msgspec writes them);
        everything else is encoded by msgspec, a run of frames at a time. Pieces are
        bytes or views (Any: compiled code would check a ``list[bytes]``).
        """
        parts: list[Any] = [_array_header(len(items))]
        size = len(parts[0])
        run: list[Frame | msgspec.Raw] = []
        for item in items:
            chunk: Any = item.chunk if type(item) is Data else b""  # may be a view
            if len(chunk) < WHOLE_CHUNK:
                run.append(item)
                continue
            if run:
                size += self._append_run(parts, run)
                run = []
            data = cast("Data", item)
            head = _DATA_HEAD + _uint(data.sid) + _bin_header(len(chunk))
            tail = _TRUE if data.end else _FALSE
            parts += (head, chunk, tail)
            size += len(head) + len(chunk) + 1
        if run:
            size += self._append_run(parts, run)
        return parts, size

    def _append_run(self, parts: list[Any], run: list[Frame | msgspec.Raw]) -> int:
        """Append ``run``'s frames, encoded together; their length."""
        if len(run) == 1 and type(run[0]) is msgspec.Raw:
            parts.append(memoryview(run[0]))  # encoded when it was queued
            return len(run[0])
        encoded = self._encoder.encode(run)
        skip = len(_array_header(len(run)))  # the run's own array header
        parts.append(memoryview(encoded)[skip:])
        return len(encoded) - skip

    def message(self, *frames: Frame) -> bytes:
        """Encode and pack ``frames`` into one message."""
        return self._encoder.encode(frames)

    def decode(self, data: bytes) -> list[Frame]:
        """Decode and validate one message received from the peer."""
        if len(data) > self.max_frame:
            raise FrameTooLarge(f"message of {len(data)} bytes exceeds limit {self.max_frame}")
        try:
            frames: list[Frame] = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            # msgspec lets invalid UTF-8 in strings surface as UnicodeDecodeError.
            raise MalformedFrame(f"undecodable message: {exc}") from exc
        if not frames:
            raise MalformedFrame("empty message")
        return frames

    def decode_opening(self, data: bytes, kind: type[OpeningT]) -> tuple[OpeningT, list[Frame]]:
        """Decode a handshake message: ``kind`` (Hello or Welcome) first, then the rest.

        Frames sent with the opening one (a Ping, say) come back to be handled after it.
        """
        frames = self.decode(data)
        first = frames[0]
        if not isinstance(first, kind):
            raise MalformedFrame(f"expected {kind.__name__} first, got {type(first).__name__}")
        return first, frames[1:]

    def headers_too_large(self, frame: ReqHead | RespHead | WsOpen) -> bool:
        """Whether a head frame's headers break the header limit (its stream is reset).

        Checked per frame, not per message: one stream's oversized head must not cost
        the other streams of the tunnel anything.
        """
        return header_bytes(frame.headers) > self.max_header_bytes


def _str_subclass(value: object) -> str:
    # aiohttp hands out header names as multidict.istr, a str subclass msgspec refuses;
    # converting here spares a copy of every header list on the hot path.
    if isinstance(value, str):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__} in a frame")
