"""The frame codec: every frame round-trips; arbitrary bytes raise only ProtocolError."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import FrameTooLarge, MalformedFrame, ProtocolError
from relay.wire.protocol import (
    DATA_OVERHEAD,
    STREAM_FRAMES,
    WHOLE_CHUNK,
    Body,
    Data,
    Drain,
    FrameCodec,
    Hello,
    Limits,
    Ping,
    Pong,
    ReqHead,
    Reset,
    RespHead,
    Welcome,
    Window,
    WsAccept,
    WsClose,
    WsMsg,
    WsOpen,
    body_piece,
)

sids = st.integers(min_value=1, max_value=2**40)
text = st.text(max_size=40)
headers = st.lists(st.tuples(st.text(min_size=1, max_size=20), text), max_size=8)
chunks = st.binary(max_size=2048)
limits = st.builds(
    Limits,
    max_frame=st.integers(1024, 1 << 24),
    max_streams=st.integers(1, 10_000),
    max_header_bytes=st.integers(256, 1 << 20),
    initial_window=st.integers(1024, 2**31 - 1),
    max_body=st.integers(0, 1 << 40),
)
frames = st.one_of(
    st.builds(Hello, st.integers(0, 10), text, limits, st.booleans()),
    st.builds(Welcome, text, st.integers(1, 2**50), text, text, st.floats(0.01, 100), limits),
    st.builds(
        ReqHead,
        sids,
        st.sampled_from(["GET", "POST", "PUT", "PROPFIND"]),
        text,
        headers,
        st.sampled_from(list(Body)),
        st.integers(-1, 1 << 40),
        text,
        chunks,
        st.booleans(),
    ),
    st.builds(RespHead, sids, st.integers(100, 599), headers, chunks, st.booleans()),
    st.builds(Data, sids, chunks, st.booleans()),
    st.builds(Reset, sids, st.integers(0, 10), text),
    st.builds(Window, sids, st.integers(1, 2**31 - 1)),
    st.builds(WsOpen, sids, text, headers, st.lists(text, max_size=3), text),
    st.builds(WsAccept, sids, st.none() | text),
    st.builds(WsMsg, sids, st.booleans(), chunks),
    st.builds(WsClose, sids, st.integers(0, 4999), text),
    st.builds(Ping, st.floats(0, 1e11)),
    st.builds(Pong, st.floats(0, 1e11)),
    st.builds(Drain, st.floats(0, 1e11)),
)

codec = FrameCodec(max_frame=1 << 22, max_header_bytes=1 << 20)


@given(frames)
def test_every_frame_round_trips(frame):
    assert codec.decode(codec.message(frame)) == [frame]


@given(st.lists(frames, min_size=1, max_size=70))
def test_a_batch_of_frames_round_trips_in_order(batch):
    """Frames queued in one loop turn share a message; packing keeps every frame and its order."""
    assert (
        codec.decode(
            codec.pack([f if isinstance(f, Data) else msgspec.Raw(codec.encode(f)) for f in batch])
        )
        == batch
    )


def decodes_to_valid_frames_or_refuses(data: bytes) -> None:
    """Whatever the bytes: a ProtocolError, or frames that are valid in every field."""
    try:
        decoded = codec.decode(data)
    except ProtocolError:
        return
    assert decoded and all(
        type(f) in STREAM_FRAMES | {Hello, Welcome, Ping, Pong, Drain} for f in decoded
    )
    # Valid means: they survive their own round trip with every constraint checked.
    assert codec.decode(codec.message(*decoded)) == decoded


@given(st.binary(max_size=512))
@settings(max_examples=2000)
def test_arbitrary_bytes_decode_to_valid_frames_or_raise_protocol_errors(data):
    decodes_to_valid_frames_or_refuses(data)


@given(frames, st.data())
def test_corrupted_frames_decode_to_valid_frames_or_raise_protocol_errors(frame, data):
    encoded = bytearray(codec.message(frame))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    decodes_to_valid_frames_or_refuses(bytes(encoded))


def test_small_get_costs_few_bytes():
    head = ReqHead(1, "GET", "/", [("accept", "*/*")])
    assert len(codec.message(head)) < 40


def test_oversized_frame_is_refused_before_decoding():
    small = FrameCodec(max_frame=1024)
    with pytest.raises(FrameTooLarge):
        small.decode(codec.message(Data(1, b"x" * 2000)))


def test_oversized_header_block_is_the_streams_business_not_the_messages():
    small = FrameCodec(max_header_bytes=300)
    head = ReqHead(1, "GET", "/", [("x-big", "v" * 400)])
    (decoded,) = small.decode(codec.message(head))
    assert small.headers_too_large(decoded)
    assert not small.headers_too_large(ReqHead(1, "GET", "/", [("x-small", "v")]))


@pytest.mark.parametrize(
    "bad",
    [
        msgspec.msgpack.encode([[5, 0, b"", False]]),  # sid 0 is not a stream
        msgspec.msgpack.encode([[7, 1, 0]]),  # a zero window increment
        msgspec.msgpack.encode([[99, 1]]),  # unknown kind
        msgspec.msgpack.encode([{"sid": 1}]),  # not array-like
        msgspec.msgpack.encode([5, 1, b"", False]),  # a frame outside a message array
        msgspec.msgpack.encode([]),  # an empty message
        b"",
    ],
)
def test_invalid_frames_are_malformed(bad):
    with pytest.raises(MalformedFrame):
        codec.decode(bad)


def test_clamped_limits_never_exceed_ours_and_share_ours_when_equal() -> None:
    ours = Limits(max_frame=1 << 20, max_streams=100, initial_window=1 << 20)
    same = Limits(max_frame=1 << 20, max_streams=100, initial_window=1 << 20)
    assert same.clamped(ours) is ours  # one object for the many agents that match
    greedy = Limits(max_frame=1 << 30, max_streams=10_000, initial_window=1 << 30)
    assert greedy.clamped(ours) is ours
    modest = Limits(max_frame=1 << 16, max_streams=10, initial_window=1 << 16)
    got = modest.clamped(ours)
    assert (got.max_frame, got.max_streams, got.initial_window) == (1 << 16, 10, 1 << 16)
    assert got.max_header_bytes == min(modest.max_header_bytes, ours.max_header_bytes)


@pytest.mark.parametrize("size", [0, 31, 32, 255, 256, 65535, 65536, 1 << 20])
def test_data_overhead_bounds_what_a_body_frame_or_websocket_message_adds(size: int):
    # The tunnel queues these as structs and sizes its messages by this bound.
    codec = FrameCodec(max_frame=1 << 22)
    body = b"x" * size
    for frame in (Data(2**62, body, True), WsMsg(2**62, True, body)):
        assert len(codec.encode(frame)) - size <= DATA_OVERHEAD


def test_a_body_piece_of_bytes_is_a_view_and_of_anything_else_a_copy():
    body = bytes(range(256)) * 1024
    piece = body_piece(body, 1000, 200_000)
    assert isinstance(piece, memoryview)
    assert piece.obj is body  # no copy
    assert piece == body[1000:200_000]
    # Sent in a frame, it is decoded as bytes, like any chunk.
    codec = FrameCodec.shared(1 << 20, 64 * 1024)
    (frame,) = codec.decode(codec.pack([Data(3, piece, True)]))
    assert frame == Data(3, body[1000:200_000], True)
    assert type(frame.chunk) is bytes
    # A bytearray may change or grow later: its piece is a copy.
    mutable = bytearray(body)
    copied = body_piece(mutable, 10, 20)
    assert type(copied) is bytes
    mutable[10:20] = bytes(10)
    mutable.extend(b"more")  # not held by a view
    assert copied == body[10:20]


_SIDS = st.sampled_from([1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**62])
_CHUNK_SIZES = st.sampled_from([0, 1, WHOLE_CHUNK - 1, WHOLE_CHUNK, 65535, 65536, 65537, 200_000])
_PART_FRAMES = st.one_of(
    st.builds(
        Data,
        _SIDS,
        _CHUNK_SIZES.map(lambda n: bytes(range(256)) * (n // 256) + b"x" * (n % 256)),
        st.booleans(),
    ),
    st.builds(Window, _SIDS, st.integers(1, 2**31 - 1)),
    st.builds(WsMsg, _SIDS, st.booleans(), st.binary(max_size=300)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_PART_FRAMES, st.booleans()), min_size=1, max_size=40))
def test_a_message_in_pieces_is_byte_for_byte_the_packed_one(drawn):
    codec = FrameCodec.shared(1 << 30, 64 * 1024)
    # Some frames as queued small frames are: encoded already (Raw); chunks as views.
    items = []
    for frame, raw in drawn:
        if type(frame) is Data and raw:
            items.append(Data(frame.sid, body_piece(frame.chunk, 0, len(frame.chunk)), frame.end))
        elif raw:
            items.append(msgspec.Raw(codec.encode(frame)))
        else:
            items.append(frame)
    parts, size = codec.pack_parts(items)
    joined = b"".join(parts)
    assert joined == codec.pack(items)
    assert size == len(joined)
    # Large chunks are pieces of their own, not copies.
    whole = [p for p in parts if isinstance(p, (bytes, memoryview)) and len(p) >= WHOLE_CHUNK]
    for frame in items:
        if type(frame) is Data and len(frame.chunk) >= WHOLE_CHUNK:
            assert any(p is frame.chunk for p in whole)
