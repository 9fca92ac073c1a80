"""The buffer our own HTTP/1 protocols read into (they are asyncio.BufferedProtocol).

uvloop hands a plain protocol each read as a new bytes object: a copy of up to 256 KiB,
made only for httptools to parse it once (perf: ~10 % of the agent's CPU in a download,
and of the relay's in an upload). A buffered protocol is given a buffer to read into
instead: one per server or pool, which all its connections share. That is safe because
an event loop reads one socket at a time and a protocol parses all of a read before it
returns, and httptools' callbacks hand out bytes (copies), never views of the buffer;
whatever keeps read bytes beyond that must copy them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HEAD_READ", "READ_SIZE", "read_buffer", "read_pieces"]

#: Bytes read at most at a time (what uvloop reads for a plain protocol).
READ_SIZE: Final = 256 * 1024
#: Bytes read at a time while no body streams: a head, or a head and the start of its
#: body, which waits in memory until the body's stream can take it.
HEAD_READ: Final = 32 * 1024
# Body pieces of one read smaller than this on average are joined (see read_pieces).
_SMALL_PIECE: Final = 1024


def read_buffer() -> memoryview:
    """A buffer for the connections of one server or pool (so, of one event loop).

    A memoryview, not the bytearray: asyncio's own TLS transport (the agent's loop where
    uvloop is missing) slices the buffer it is given, and a slice of a bytearray is a
    copy, into which decrypted bytes would go and be lost.
    """
    return memoryview(bytearray(READ_SIZE))


def read_pieces(parts: list[bytes]) -> list[bytes]:
    """The body pieces the parser gave for one read, as a stream should take them.

    Chunked encoding lets a peer send a byte per chunk: handed on one by one, each became
    a tunnel frame, and one client's upload of 1-byte chunks kept its host's agent busy
    (3 s for the host's other requests). Small pieces are joined into one; large ones
    pass as they are, uncopied.
    """
    if len(parts) > 1 and sum(len(part) for part in parts) < len(parts) * _SMALL_PIECE:
        return [b"".join(parts)]
    return parts
