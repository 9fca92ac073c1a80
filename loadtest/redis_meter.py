"""A counting TCP proxy in front of Redis/Valkey: commands and round trips of its clients.

The relay under test gets the proxy's URL as ``--redis-url``; the proxy forwards bytes
unchanged and parses RESP on the way to count, per connection:

* commands, by name (top-level only: what a script runs inside the server is not here);
* round trips: a command sent while none of that connection's earlier commands is still
  waiting for its reply starts a new round trip; the commands of one pipeline therefore
  count as one (were the server to answer the head of a long pipeline before the proxy
  read its tail, that would count twice: the figure errs high, never low);
* each round trip is named after its first command; EVALSHA with its script's SHA prefix
  (the ownership refresh is one script).

Replies are counted to know when a connection has nothing outstanding; RESP3 pushes
(pub/sub messages) are not replies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

_CRLF = b"\r\n"
_BULK = frozenset(b"$!=")
_AGGREGATE = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}
_PUSH = ord(">")
_ATTRIBUTE = ord("|")
_READ = 1 << 20


def skip_value(buf: bytearray, pos: int) -> int:
    """The end of the RESP value starting at ``pos``, or -1 when it is not complete yet."""
    pending = 1
    while pending:
        eol = buf.find(_CRLF, pos)
        if eol < 0:
            return -1
        kind = buf[pos]
        pending -= 1
        if kind in _BULK:
            size = int(buf[pos + 1 : eol])
            pos = eol + 2 + (size + 2 if size >= 0 else 0)
            if pos > len(buf):
                return -1
        elif kind in _AGGREGATE:
            size = int(buf[pos + 1 : eol])
            # An attribute map also precedes the value it annotates: one more to skip.
            pending += max(0, size) * _AGGREGATE[kind] + (kind == _ATTRIBUTE)
            pos = eol + 2
        else:
            pos = eol + 2
    return pos


def command_name(buf: bytearray, start: int) -> str:
    """The name (first bulk string) of the command array at ``start``; for EVALSHA, with
    the first 8 characters of the script's SHA (``EVALSHA 1a2b3c4d``)."""
    head = buf.find(_CRLF, start)
    size_end = buf.find(_CRLF, head + 2)
    size = int(buf[head + 3 : size_end])
    name = bytes(buf[size_end + 2 : size_end + 2 + size]).decode(errors="replace").upper()
    if name == "EVALSHA":
        sha_at = buf.find(_CRLF, size_end + 2 + size + 2) + 2
        name += " " + bytes(buf[sha_at : sha_at + 8]).decode(errors="replace")
    return name


@dataclass
class Counts:
    """What the proxy saw, summed over all connections."""

    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    round_trips: collections.Counter[str] = field(default_factory=collections.Counter)
    largest_round_trip: int = 0  # commands in the biggest pipeline seen

    def copy(self) -> Counts:
        return Counts(
            collections.Counter(self.commands),
            collections.Counter(self.round_trips),
            self.largest_round_trip,
        )

    def minus(self, earlier: Counts) -> Counts:
        return Counts(
            self.commands - earlier.commands,
            self.round_trips - earlier.round_trips,
            self.largest_round_trip,
        )


class _Connection:
    """One client connection's parse state."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.outstanding = 0
        self.in_round_trip = 0
        self.sent = bytearray()
        self.received = bytearray()

    def client_bytes(self, data: bytes) -> None:
        buf = self.sent
        buf += data
        pos = 0
        while pos < len(buf):
            end = skip_value(buf, pos)
            if end < 0:
                break
            name = command_name(buf, pos)
            self.counts.commands[name] += 1
            if self.outstanding == 0:
                self.counts.round_trips[name] += 1
                self.in_round_trip = 0
            self.outstanding += 1
            self.in_round_trip += 1
            self.counts.largest_round_trip = max(self.counts.largest_round_trip, self.in_round_trip)
            pos = end
        del buf[:pos]

    def server_bytes(self, data: bytes) -> None:
        buf = self.received
        buf += data
        pos = 0
        while pos < len(buf):
            end = skip_value(buf, pos)
            if end < 0:
                break
            if buf[pos] != _PUSH:
                self.outstanding = max(0, self.outstanding - 1)
            pos = end
        del buf[:pos]


class RedisMeter:
    """The proxy: listens on loopback, forwards to ``target_url`` (redis:// or unix://)."""

    def __init__(self, target_url: str) -> None:
        self.target = urlsplit(target_url)
        self.counts = Counts()
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> RedisMeter:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_READ)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _open_target(self):
        if self.target.scheme == "unix":
            return await asyncio.open_unix_connection(unquote(self.target.path), limit=_READ)
        return await asyncio.open_connection(
            self.target.hostname, self.target.port or 6379, limit=_READ
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self.counts)
        try:
            up_reader, up_writer = await self._open_target()
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.create_task(_pump(reader, up_writer, conn.client_bytes)),
            asyncio.create_task(_pump(up_reader, writer, conn.server_bytes)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(_READ):
            writer.write(data)
            count(data)
            await writer.drain()
