"""The tunnel event log: every tunnel change, as frozen tagged events in one Redis Stream.

Events are ``msgspec`` structs tagged by ``kind`` with a ``version`` and the time ``at``
(unix seconds) they happened. A consumer that meets a kind it does not know (written by
a newer relay) skips it and counts it; a newer *version* of a known kind still decodes,
because fields are only ever added, with defaults (unknown fields are ignored). A change
that cannot be made that way gets a new kind.

Storage (:class:`RedisEventLog`): the stream ``p:{events}``, bounded by an approximate
``MAXLEN`` (``XADD ... MAXLEN ~ n``: the store trims whole radix-tree nodes, cheaply). A
batch is appended by one small Lua script per 1000 events, in one round trip: with
redis-py the client's per-command packing, not the store, is what limits an appender.
Each entry has two fields::

    k   the kind, so a reader can skip kinds it does not know without decoding the body
    e   the event, msgspec JSON (kind tag included)

:class:`MemoryEventLog` keeps the same entries in a list, ids and all, for unit tests and
tools; one contract test suite runs against both. Consumer groups (at-least-once
delivery, reclaim, dead letters) live in :mod:`directory.consumer`.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec
import structlog
from redis.exceptions import ResponseError

from directory._scripts import KeyArgs, LuaScript, pack_strings, run_batches
from directory.errors import CorruptRecord, InvalidInput
from directory.stats import STATS, Stats
from directory.store import translate_errors

if TYPE_CHECKING:
    from collections.abc import Sequence

    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = [
    "DEFAULT_MAXLEN",
    "KINDS",
    "MAX_READ",
    "AnyEvent",
    "Connected",
    "DisconnectReason",
    "Disconnected",
    "DnsWriteFailed",
    "DnsWriteSucceeded",
    "Event",
    "EventLog",
    "EventPage",
    "HostChanged",
    "HostRegistered",
    "HostRemoved",
    "LogInfo",
    "MachineDraining",
    "MachineStarted",
    "MachineStopped",
    "MemoryEventLog",
    "RedisEventLog",
    "decode_entry",
    "encode_event",
    "kind_of",
    "parse_entry_id",
]

# ~100k entries of ~200 bytes: a few tens of MB, hours of churn for a large fleet.
DEFAULT_MAXLEN = 100_000
# The most entries one read returns (a page of the API, a batch of a consumer).
MAX_READ = 10_000

DisconnectReason = Literal["closed", "missed_pong", "drain", "replaced", "owner_expired", "removed"]

_log = structlog.get_logger("directory.events")


class Event(msgspec.Struct, gc=False, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every event: its schema ``version`` and when it happened (``at``, unix s)."""

    version: int = 1
    at: float = msgspec.field(default_factory=time.time)


class HostRegistered(Event, frozen=True, kw_only=True, tag="host_registered"):
    """A host was added (``relay hosts add``)."""

    host_id: str
    slug: str
    name: str


class HostRemoved(Event, frozen=True, kw_only=True, tag="host_removed"):
    """A host was removed; its id is never used again."""

    host_id: str
    slug: str


class HostChanged(Event, frozen=True, kw_only=True, tag="host_changed"):
    """A host's slug or reported address changed."""

    host_id: str
    slug: str
    address: str | None = None


class Connected(Event, frozen=True, kw_only=True, tag="connected"):
    """An agent's tunnel was accepted with fencing ``epoch`` on ``machine_id``."""

    host_id: str
    machine_id: str
    epoch: int
    remote_addr: str
    agent_version: str


class Disconnected(Event, frozen=True, kw_only=True, tag="disconnected"):
    """The tunnel of ``epoch`` ended (or the reconciler found its owner key expired)."""

    host_id: str
    machine_id: str
    epoch: int
    reason: DisconnectReason


class MachineStarted(Event, frozen=True, kw_only=True, tag="machine_started"):
    """A relay machine started serving; ``address`` is its routing address."""

    machine_id: str
    address: str


class MachineDraining(Event, frozen=True, kw_only=True, tag="machine_draining"):
    """A relay machine began to drain (SIGTERM)."""

    machine_id: str


class MachineStopped(Event, frozen=True, kw_only=True, tag="machine_stopped"):
    """A relay machine finished draining and stopped."""

    machine_id: str


class DnsWriteSucceeded(Event, frozen=True, kw_only=True, tag="dns_write_succeeded"):
    """A DNS record write (``op``: create, update, delete) succeeded."""

    host_id: str
    fqdn: str
    op: str


class DnsWriteFailed(Event, frozen=True, kw_only=True, tag="dns_write_failed"):
    """A DNS record write failed; ``http_status`` is the provider's answer, if any."""

    host_id: str
    fqdn: str
    op: str
    error: str
    http_status: int | None = None


AnyEvent = (
    HostRegistered
    | HostRemoved
    | HostChanged
    | Connected
    | Disconnected
    | MachineStarted
    | MachineDraining
    | MachineStopped
    | DnsWriteSucceeded
    | DnsWriteFailed
)

_EVENT_TYPES: tuple[type[Event], ...] = (
    HostRegistered,
    HostRemoved,
    HostChanged,
    Connected,
    Disconnected,
    MachineStarted,
    MachineDraining,
    MachineStopped,
    DnsWriteSucceeded,
    DnsWriteFailed,
)
KINDS: frozenset[str] = frozenset(str(t.__struct_config__.tag) for t in _EVENT_TYPES)

# Events per XADD script call: one EVALSHA instead of a command per event (the client's
# packing and parsing, not the store, is what limits a Python appender).
_APPEND_CHUNK = 1000

# KEYS: the stream. ARGV: maxlen, then a MessagePack flat array of kind and body of each
# event. Returns the ids.
_APPEND = LuaScript(
    "events_append",
    """
local t = cmsgpack.unpack(ARGV[2])
local ids = {}
for i = 1, #t, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                             'k', t[i], 'e', t[i + 1])
end
return ids
""",
)

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_ENTRY_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")


def kind_of(event: Event) -> str:
    """The ``kind`` tag of an event."""
    return str(type(event).__struct_config__.tag)


def encode_event(event: Event) -> bytes:
    """The stored form of an event (msgspec JSON, kind tag included)."""
    return _ENCODER.encode(event)


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> AnyEvent | None:
    """The event of one stream entry; None for a kind this version does not know.

    Raises :class:`CorruptRecord` for an entry of a known kind that does not decode (or
    that has no kind at all): a poison entry, which consumers park as a dead letter.
    """
    kind = fields.get(b"k")
    body = fields.get(b"e")
    if kind is None or body is None:
        raise CorruptRecord(f"event entry {entry_id} lacks its 'k' or 'e' field")
    if kind.decode(errors="replace") not in KINDS:
        return None
    try:
        return _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(f"event entry {entry_id} ({kind!r}) does not decode: {exc}") from exc


def parse_entry_id(value: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``) as a pair; :class:`InvalidInput` for anything else."""
    match = _ENTRY_ID.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"{value!r} is not an event id (expected <ms>-<seq>)")
    return int(match[1]), int(match[2] or 0)


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_READ:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_READ}, got {limit!r}")


class EventPage(msgspec.Struct, frozen=True):
    """One page of the log: decoded events, and the id of the last entry *scanned*.

    ``last_id`` moves past skipped entries too, so a reader paging with it never stalls
    on an entry it cannot decode. It is None when the page scanned nothing.
    """

    events: list[tuple[str, AnyEvent]]
    last_id: str | None


class LogInfo(msgspec.Struct, frozen=True):
    """The shape of the log: ``complete`` is False once anything was trimmed away."""

    length: int
    entries_added: int
    first_id: str | None
    last_id: str | None

    @property
    def complete(self) -> bool:
        """Whether every entry ever appended is still in the log."""
        return self.length == self.entries_added


class EventLog(Protocol):
    """An append-only log of events (one Redis Stream, or a list in memory)."""

    async def append(self, event: AnyEvent) -> str:
        """Append one event; returns its entry id."""
        ...

    async def append_many(self, events: Sequence[AnyEvent]) -> list[str]:
        """Append events in order (one round trip); returns their entry ids."""
        ...

    async def read(self, after: str | None, limit: int) -> list[tuple[str, AnyEvent]]:
        """Up to ``limit`` events after entry ``after`` (from the start when None)."""
        ...

    async def read_page(self, after: str | None, limit: int) -> EventPage:
        """Like :meth:`read`, and also says how far it scanned."""
        ...

    async def info(self) -> LogInfo:
        """Length, entries ever added, first and last entry ids."""
        ...


def _page(entries: Sequence[tuple[str, dict[bytes, bytes]]], stats: Stats, where: str) -> EventPage:
    events: list[tuple[str, AnyEvent]] = []
    for entry_id, fields in entries:
        try:
            event = decode_entry(entry_id, fields)
        except CorruptRecord as exc:
            stats.incr("relay_events_corrupt_skipped_total")
            _log.warning(
                "events.corrupt_entry_skipped", log=where, entry_id=entry_id, error=str(exc)
            )
            continue
        if event is None:
            stats.incr("relay_events_unknown_skipped_total")
            _log.debug("events.unknown_kind_skipped", log=where, entry_id=entry_id)
            continue
        events.append((entry_id, event))
    return EventPage(events, entries[-1][0] if entries else None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisEventLog:
    """The event log as one Redis Stream (``keys.events()``), trimmed to ~``maxlen``."""

    def __init__(
        self,
        redis: StoreClient,
        keys: Keys,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        stats: Stats = STATS,
    ) -> None:
        if maxlen < 1:
            raise InvalidInput(f"maxlen must be at least 1, got {maxlen}")
        self._redis = redis
        self._key = keys.events()
        self._maxlen = maxlen
        self._stats = stats

    @property
    def key(self) -> str:
        """The stream's key."""
        return self._key

    async def append(self, event: AnyEvent) -> str:
        """Append one event; returns its entry id."""
        return (await self.append_many([event]))[0]

    async def append_many(self, events: Sequence[AnyEvent]) -> list[str]:
        """Append in order, in one round trip: a script XADDs each chunk of events.

        Each chunk of :data:`_APPEND_CHUNK` is atomic; a batch of several chunks is not
        (pipelined). If the connection drops mid-batch some chunks may be in the log and
        the caller retries, so an event may appear twice; every handler is idempotent
        (at-least-once, as everywhere in the log).
        """
        return await self.append_raw([(kind_of(e), encode_event(e)) for e in events])

    async def append_raw(self, entries: Sequence[tuple[str, bytes]]) -> list[str]:
        """Append ``(kind, body)`` entries as they are (tools, and tests of bad entries)."""
        if not entries:
            return []
        batches: list[KeyArgs] = []
        for start in range(0, len(entries), _APPEND_CHUNK):
            # One packed argument per chunk, not two per event: redis-py's packing of
            # arguments costs more than the script's work (see presence_apply).
            flat: list[str | bytes] = []
            for kind, body in entries[start : start + _APPEND_CHUNK]:
                flat += (kind, body)
            batches.append(([self._key], [self._maxlen, pack_strings(flat)]))
        with translate_errors(f"append {len(entries)} events"):
            replies = await run_batches(self._redis, _APPEND, batches)
        ids = [_text(i) for reply in replies for i in reply]
        self._stats.incr("relay_events_appended_total", len(ids))
        return ids

    async def read(self, after: str | None, limit: int) -> list[tuple[str, AnyEvent]]:
        """Up to ``limit`` events after ``after``; unknown kinds are skipped and counted."""
        return (await self.read_page(after, limit)).events

    async def read_page(self, after: str | None, limit: int) -> EventPage:
        """One page of events after ``after`` (exclusive), oldest first."""
        _check_limit(limit)
        start = "-" if after is None else "({}-{}".format(*parse_entry_id(after))
        with translate_errors("read the event log"):
            raw: Any = await self._redis.xrange(self._key, start, "+", count=limit)
        return _page([(_text(i), f) for i, f in raw or ()], self._stats, self._key)

    async def info(self) -> LogInfo:
        """Length, entries ever added, first and last ids (XINFO STREAM)."""
        with translate_errors("describe the event log"):
            try:
                info = await self._redis.xinfo_stream(self._key)
            except ResponseError as exc:
                # Nothing was ever appended: no stream yet.
                if "no such key" in str(exc).lower():
                    return LogInfo(0, 0, None, None)
                raise
        first = info.get("first-entry")
        last = info.get("last-entry")
        return LogInfo(
            int(info["length"]),
            int(info.get("entries-added", info["length"])),
            _text(first[0]) if first else None,
            _text(last[0]) if last else None,
        )


class MemoryEventLog:
    """The event log in a list: the same ids, codec and trimming, no store.

    Trimming is exact (``maxlen``), where Redis trims approximately.
    """

    def __init__(self, *, maxlen: int = DEFAULT_MAXLEN, stats: Stats = STATS) -> None:
        if maxlen < 1:
            raise InvalidInput(f"maxlen must be at least 1, got {maxlen}")
        self._entries: list[tuple[tuple[int, int], str, dict[bytes, bytes]]] = []
        self._last = (0, 0)
        self._added = 0
        self._maxlen = maxlen
        self._stats = stats

    async def append(self, event: AnyEvent) -> str:
        """Append one event; returns its entry id."""
        return (await self.append_many([event]))[0]

    async def append_many(self, events: Sequence[AnyEvent]) -> list[str]:
        """Append events in order; returns their entry ids."""
        return await self.append_raw([(kind_of(e), encode_event(e)) for e in events])

    async def append_raw(self, entries: Sequence[tuple[str, bytes]]) -> list[str]:
        """Append ``(kind, body)`` entries as they are."""
        ids: list[str] = []
        for kind, body in entries:
            ms = int(time.time() * 1000)
            # Like Redis: the clock may stall or step back; ids still only grow.
            key = (ms, 0) if ms > self._last[0] else (self._last[0], self._last[1] + 1)
            self._last = key
            entry_id = f"{key[0]}-{key[1]}"
            self._entries.append((key, entry_id, {b"k": kind.encode(), b"e": body}))
            ids.append(entry_id)
        self._added += len(ids)
        del self._entries[: max(0, len(self._entries) - self._maxlen)]
        self._stats.incr("relay_events_appended_total", len(ids))
        return ids

    async def read(self, after: str | None, limit: int) -> list[tuple[str, AnyEvent]]:
        """Up to ``limit`` events after ``after``; unknown kinds are skipped and counted."""
        return (await self.read_page(after, limit)).events

    async def read_page(self, after: str | None, limit: int) -> EventPage:
        """One page of events after ``after`` (exclusive), oldest first."""
        _check_limit(limit)
        start = (-1, -1) if after is None else parse_entry_id(after)
        picked = [(i, f) for key, i, f in self._entries if key > start][:limit]
        return _page(picked, self._stats, "memory")

    async def info(self) -> LogInfo:
        """Length, entries ever added, first and last ids."""
        entries = self._entries
        return LogInfo(
            len(entries),
            self._added,
            entries[0][1] if entries else None,
            entries[-1][1] if entries else None,
        )
