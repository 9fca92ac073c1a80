"""Presence: is each host online, where, since when, and why it last went away.

The projection is a pure fold over the event log, built so that it cannot lie when the
log is delivered late, twice or out of order (consumer groups are at-least-once, and
several machines apply entries side by side):

* Each event is *lifted* to a partial :class:`Presence`, and :func:`join` merges two
  presences. ``join`` is commutative, associative and idempotent (a semilattice), so any
  interleaving and duplication of the same events folds to the same state.
* The connect side keeps the ``Connected`` of the highest epoch; the disconnect side keeps
  the ``Disconnected`` of the highest epoch. A host is online when its newest connect is
  newer than its newest disconnect: the (epoch, phase) key, with disconnect after connect
  within an epoch. So a late ``Disconnected`` of epoch 4 never marks epoch 5 offline; it
  can only update ``last_disconnected_at`` when it is the newest disconnect seen, which is
  what the in-order history says as well (e.g. reason ``replaced`` while online again).
* Two ``Disconnected`` of one epoch (the machine's own, and the reconciler's guess
  ``owner_expired``): the machine's reason wins, then the earliest.
* ``HostRemoved`` is a tombstone that absorbs everything: a host id is never reused, so
  nothing that arrives after it can bring the host back.

Stored (:class:`PresenceStore`) in the hash ``p:{presence}`` (host id -> JSON) together with
``p:{presence}:position`` (the newest applied entry id), written by one Lua script that
compares every record it read (by SHA1) before writing any (compare-and-set): a writer
that raced another re-reads and folds again, so no event is lost between two machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import TYPE_CHECKING

import msgspec
import structlog

from directory._scripts import LuaScript, pack_strings
from directory.errors import StoreError
from directory.events import Connected, Disconnected, HostRegistered, HostRemoved
from directory.stats import STATS, Stats
from directory.store import translate_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from directory.events import AnyEvent
    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = ["Presence", "PresenceStore", "fold", "fold_all", "join", "lift"]

# Compare-and-set rounds before a batch gives up (and stays pending for a retry).
_CAS_ATTEMPTS = 10

_log = structlog.get_logger("directory.presence")

_Raw = bytes | str  # a value as redis-py hands it over (bytes: we never decode responses)


class Presence(msgspec.Struct, gc=False, frozen=True, tag_field="kind", tag="presence"):
    """What the directory knows of a host's tunnel (``epoch`` is the newest seen).

    The last three fields are the fold's bookkeeping, not shown by the API: the epochs of
    the newest connect and disconnect, and the tombstone of a removed host.
    """

    host_id: str
    online: bool = False
    machine_id: str | None = None
    epoch: int | None = None
    last_connected_at: float | None = None
    last_disconnected_at: float | None = None
    disconnect_reason: str | None = None
    agent_version: str | None = None
    remote_addr: str | None = None
    connected_epoch: int | None = None
    disconnected_epoch: int | None = None
    removed: bool = False
    version: int = 1


def lift(event: AnyEvent) -> Presence | None:
    """What one event says about its host's presence; None for events it ignores."""
    if isinstance(event, Connected):
        return Presence(
            event.host_id,
            online=True,
            machine_id=event.machine_id,
            epoch=event.epoch,
            last_connected_at=event.at,
            agent_version=event.agent_version,
            remote_addr=event.remote_addr,
            connected_epoch=event.epoch,
        )
    if isinstance(event, Disconnected):
        return Presence(
            event.host_id,
            machine_id=event.machine_id,
            epoch=event.epoch,
            last_disconnected_at=event.at,
            disconnect_reason=event.reason,
            disconnected_epoch=event.epoch,
        )
    if isinstance(event, HostRegistered):
        return Presence(event.host_id)
    if isinstance(event, HostRemoved):
        return Presence(event.host_id, removed=True)
    return None


def _connect_rank(p: Presence) -> tuple[object, ...]:
    # One Connected per epoch; the rest of the key only makes duplicates tie-break alike.
    return (
        p.connected_epoch or 0,
        p.last_connected_at or 0.0,
        p.remote_addr or "",
        p.agent_version or "",
    )


def _disconnect_rank(p: Presence) -> tuple[object, ...]:
    # Within one epoch the machine's own reason beats the reconciler's guess, then the
    # earliest report wins (the first time the reconciler noticed).
    return (
        p.disconnected_epoch or 0,
        p.disconnect_reason != "owner_expired",
        -(p.last_disconnected_at or 0.0),
        p.disconnect_reason or "",
    )


def join(a: Presence, b: Presence) -> Presence:
    """The least presence that knows everything ``a`` and ``b`` know (order-free).

    ``a`` and ``b`` are normalized (outputs of :func:`lift` or of ``join``), so when one
    of them already knows everything it is returned as it is.
    """
    if a.host_id != b.host_id:
        raise ValueError(f"cannot join presences of {a.host_id} and {b.host_id}")
    if a.removed or b.removed:
        return a if a.removed else b
    c = _newer(a, b, a.connected_epoch, b.connected_epoch, _connect_rank)
    d = _newer(a, b, a.disconnected_epoch, b.disconnected_epoch, _disconnect_rank)
    if c is not b and d is not b:
        return a
    if c is not a and d is not a:
        return b
    ec = c.connected_epoch if c else None
    ed = d.disconnected_epoch if d else None
    online = ec is not None and (ed is None or ec > ed)
    # The machine of the newest side. In the input that supplied that side, the side was
    # also its own newest, so its machine_id belongs to it.
    head = c if online else d
    return Presence(
        a.host_id,
        online=online,
        machine_id=head.machine_id if head else None,
        epoch=(ec if online else ed),
        last_connected_at=c.last_connected_at if c else None,
        last_disconnected_at=d.last_disconnected_at if d else None,
        disconnect_reason=d.disconnect_reason if d else None,
        agent_version=c.agent_version if c else None,
        remote_addr=c.remote_addr if c else None,
        connected_epoch=ec,
        disconnected_epoch=ed,
    )


def _newer(
    a: Presence,
    b: Presence,
    in_a: int | None,
    in_b: int | None,
    rank: Callable[[Presence], tuple[object, ...]],
) -> Presence | None:
    """Which of ``a`` and ``b`` holds the newer side (None: neither has one); ties: ``a``."""
    if in_a is None:
        return None if in_b is None else b
    if in_b is None or in_a > in_b:
        return a
    if in_b > in_a:
        return b
    return a if rank(a) >= rank(b) else b


def fold(state: Presence | None, event: AnyEvent) -> Presence | None:
    """Apply one event to a host's presence (pure; order-tolerant and idempotent)."""
    part = lift(event)
    if part is None:
        return state
    return part if state is None else join(state, part)


def fold_all(
    events: Iterable[AnyEvent], states: Mapping[str, Presence] | None = None
) -> dict[str, Presence]:
    """Fold many events over many hosts (``states`` is not modified)."""
    result = dict(states or {})
    for event in events:
        host_id = getattr(event, "host_id", None)
        if host_id is None:
            continue
        new = fold(result.get(host_id), event)
        if new is not None:
            result[host_id] = new
    return result


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Presence)
_Read = tuple[_Raw | None, Presence | None]  # the stored bytes (compared on write), decoded

# KEYS: presence hash, position key. ARGV[1]: entry id ('' for none). ARGV[2]: MessagePack
# of a flat array: per host, its id, the SHA1 of the value read ('' when absent) and the
# new value. One argument rather than three per host: the client's packing of arguments
# costs more than the script itself. All-or-nothing: any record that changed since it was
# read fails the whole batch (returns the 1-based indexes of those hosts) and nothing is
# written. The position only moves forward.
_APPLY = LuaScript(
    "presence_apply",
    """
local t = cmsgpack.unpack(ARGV[2])
local conflicts = {}
for i = 1, #t, 3 do
  local current = redis.call('HGET', KEYS[1], t[i])
  local seen = current and redis.sha1hex(current) or ''
  if seen ~= t[i + 1] then
    conflicts[#conflicts + 1] = (i + 2) / 3
  end
end
if #conflicts > 0 then
  return conflicts
end
for i = 1, #t, 3 do
  redis.call('HSET', KEYS[1], t[i], t[i + 2])
end
if ARGV[1] ~= '' then
  local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
  end
  local current = redis.call('GET', KEYS[2])
  local newer = true
  if current then
    local ams, aseq = parse(ARGV[1])
    local bms, bseq = parse(current)
    if bms and (bms > ams or (bms == ams and bseq >= aseq)) then
      newer = false
    end
  end
  if newer then
    redis.call('SET', KEYS[2], ARGV[1])
  end
end
return conflicts
""",
)


# KEYS: presence hash. ARGV[1]: a MessagePack array of host ids. HMGET with one packed
# argument: a consumer reads hundreds of hosts per batch, and packing one argument per
# host costs the client more than the read costs the store.
_READ = LuaScript(
    "presence_read",
    """
local hosts = cmsgpack.unpack(ARGV[1])
local values = {}
for i = 1, #hosts do
  values[i] = redis.call('HGET', KEYS[1], hosts[i])
end
return values
""",
)


def _digest(raw: _Raw | None) -> str:
    """What the apply script compares a stored value by ('' for none)."""
    if raw is None:
        return ""
    data = raw.encode() if isinstance(raw, str) else raw
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _newest(entry_ids: Iterable[str]) -> str | None:
    best: tuple[int, int] | None = None
    for entry_id in entry_ids:
        ms, _, seq = entry_id.partition("-")  # ids from the log are well formed
        key = (int(ms), int(seq or 0))
        if best is None or key > best:
            best = key
    return None if best is None else f"{best[0]}-{best[1]}"


class PresenceStore:
    """The presence projection in the store: read it, apply events to it, replace it."""

    def __init__(self, redis: StoreClient, keys: Keys, *, stats: Stats = STATS) -> None:
        self._redis = redis
        self._hash = keys.presence()
        self._position = keys.presence_position()
        self._stats = stats

    async def get(self, host_id: str) -> Presence | None:
        """A host's presence; None when nothing is known (or the host was removed)."""
        return (await self.get_many([host_id]))[host_id]

    async def get_many(self, host_ids: Sequence[str]) -> dict[str, Presence | None]:
        """Presence of many hosts in one HMGET (None: unknown, or removed)."""
        raw = await self._read(host_ids)
        return {h: None if p is None or p.removed else p for h, (_, p) in raw.items()}

    async def all(self) -> dict[str, Presence]:
        """Every stored record, tombstones of removed hosts included."""
        with translate_errors("read the presence projection"):
            raw = await self._redis.hgetall(self._hash)
        result: dict[str, Presence] = {}
        for host, value in raw.items():
            presence = self._decode(_text(host), value)
            if presence is not None:
                result[presence.host_id] = presence
        return result

    async def position(self) -> str | None:
        """The newest log entry id applied (None before the first)."""
        with translate_errors("read the presence position"):
            value = await self._redis.get(self._position)
        return None if value is None else _text(value)

    async def apply(self, entries: Sequence[tuple[str, AnyEvent]]) -> int:
        """Fold entries into the stored projection; returns how many hosts changed.

        Reads the hosts involved, folds, and writes them back with the position in one
        compare-and-set; a conflict (another machine wrote one of them meanwhile) means
        read and fold again. :class:`StoreError` after repeated conflicts: the caller
        leaves the entries pending and they are retried later.
        """
        by_host: dict[str, list[Presence]] = {}
        for _, event in entries:
            part = lift(event)
            if part is not None:
                by_host.setdefault(part.host_id, []).append(part)
        position = _newest(entry_id for entry_id, _ in entries) or ""
        hosts = list(by_host)
        for attempt in range(_CAS_ATTEMPTS):
            current = await self._read(hosts)
            writes: list[str] = []
            for host in hosts:
                raw, state = current[host]
                new = state
                for part in by_host[host]:
                    new = part if new is None else join(new, part)
                if new is not None and new != state:
                    writes += (host, _digest(raw), _ENCODER.encode(new).decode())
            changed = len(writes) // 3
            if changed == 0 and not position:
                return 0
            args: list[str | bytes | int] = [position, pack_strings(writes)]
            with translate_errors("write the presence projection"):
                conflicts = await _APPLY(self._redis, [self._hash, self._position], args)
            if not conflicts:
                return changed
            self._stats.incr("relay_presence_write_conflicts_total")
            # Someone else just wrote these hosts; a random pause keeps racers apart.
            await asyncio.sleep(random.uniform(0, 0.001 * 2**attempt))  # noqa: S311 - jitter
        raise StoreError(f"presence of {len(hosts)} hosts kept changing; will retry")

    async def replace(self, states: Mapping[str, Presence], position: str | None) -> None:
        """Swap the whole projection for ``states`` at ``position`` (one MULTI/EXEC)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._hash)
        items = [(h, _ENCODER.encode(p)) for h, p in states.items()]
        for start in range(0, len(items), 1000):
            pipe.hset(self._hash, mapping=dict(items[start : start + 1000]))
        if position is None:
            pipe.delete(self._position)
        else:
            pipe.set(self._position, position)
        with translate_errors(f"replace the presence of {len(items)} hosts"):
            await pipe.execute()

    async def _read(self, host_ids: Sequence[str]) -> dict[str, _Read]:
        if not host_ids:
            return {}
        with translate_errors(f"read presence of {len(host_ids)} hosts"):
            raws = await _READ(self._redis, [self._hash], [pack_strings(host_ids)])
        return {
            host: (raw, None if raw is None else self._decode(host, raw))
            for host, raw in zip(host_ids, raws, strict=True)
        }

    def _decode(self, host_id: str, raw: _Raw) -> Presence | None:
        try:
            return _DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # A projection can always be rebuilt from the log; one bad record must not
            # take the host list down. Treated as unknown until folded over or rebuilt.
            self._stats.incr("relay_presence_corrupt_total")
            _log.warning("presence.corrupt_record", host_id=host_id, error=str(exc))
            return None
