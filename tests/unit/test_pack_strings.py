"""pack_strings: MessagePack arrays of raw strings for the store's cmsgpack."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from directory._scripts import pack_strings


@given(st.lists(st.text(max_size=70_000) | st.binary(max_size=300), max_size=40))
def test_any_strings_round_trip_as_messagepack_str_items(items):
    raw = [i.encode() if isinstance(i, str) else i for i in items]
    # Each item decodes (as a raw MessagePack object) to a str header and the very bytes
    # given, valid UTF-8 or not: the store's cmsgpack hands Lua exactly those bytes.
    packed = msgspec.msgpack.decode(pack_strings(items), type=list[msgspec.Raw])
    assert len(packed) == len(items)
    for item, raw_obj in zip(raw, packed, strict=True):
        obj = bytes(raw_obj)
        header = obj[: len(obj) - len(item)]
        assert obj.endswith(item) and 1 <= len(header) <= 5
        assert header[0] in (0xD9, 0xDA, 0xDB) or header[0] & 0xE0 == 0xA0  # str types


def test_array_headers_for_every_length_class():
    for n in (0, 15, 16, 65_535, 65_536):
        items = [b"k"] * n
        assert msgspec.msgpack.decode(pack_strings(items)) == ["k"] * n
