"""Who holds each host's tunnel: fencing epochs and owner records with native TTLs.

Rules (see DESIGN "Ownership"):

* Every connection gets a fencing epoch from ``INCR p:{h:<host>}:epoch``. The owner record
  ``p:{h:<host>}:owner`` holds ``{machine_id, epoch}`` and is written with ``PX ttl``.
* Newest wins: a claim overwrites any owner with a lower epoch, and tells everyone on the
  ``owner-events`` channel, so the machine holding the older tunnel closes it.
* Refresh extends the TTL only while the record is still exactly ours (compare-and-pexpire)
  and release deletes only while it is still ours (compare-and-delete). An older epoch can
  therefore never extend or delete a newer owner.
* No sweeper ever deletes an owner key: a machine that dies simply stops refreshing and
  its records expire.

All comparisons happen inside Lua scripts, so each decision is atomic in the store. A
host's epoch, owner and reclaim keys share its hash tag (``directory.keys``), so each
script sees one slot in Redis Cluster too; refresh and reassert batch per slot there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from directory._scripts import KeyArgs, LuaScript, by_slot, run_batches
from directory.errors import CorruptRecord, StoreError, Superseded
from directory.models import OwnerRecord, TakeoverNotice, decode, encode
from directory.store import mget, translate_errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = ["BATCH_SIZE", "OwnershipStore", "Reasserted"]

# Hosts per EVALSHA in refresh/reassert. A batch runs atomically, blocking the store for
# its duration; 500 GET+PEXPIREs take well under a millisecond.
BATCH_SIZE = 500

# Seconds a pub/sub read waits before looping, so health checks run on a quiet channel.
_PUBSUB_POLL = 1.0

_log = structlog.get_logger("directory.ownership")

# KEYS: epoch, owner. ARGV: owner head, owner tail, ttl_ms, channel, notice head, notice tail.
# The channel is not a key: in Redis Cluster a PUBLISH reaches every node's subscribers.
# The heads/tails are msgspec's own encoding split around the epoch, so the record written
# here is byte-for-byte the one Python encodes (refresh and release compare bytes).
_CLAIM = LuaScript(
    "claim",
    """
local epoch = redis.call('INCR', KEYS[1])
local current = redis.call('GET', KEYS[2])
if current then
  local ok, rec = pcall(cjson.decode, current)
  if ok and type(rec) == 'table' and type(rec.epoch) == 'number' and rec.epoch >= epoch then
    -- The counter fell behind a live owner (e.g. a failover lost writes): lift it so the
    -- next claim wins, and report the newer owner.
    redis.call('SET', KEYS[1], string.format('%d', rec.epoch))
    return {0, epoch, current}
  end
end
local e = string.format('%d', epoch)
redis.call('SET', KEYS[2], ARGV[1] .. e .. ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. e .. ARGV[6])
return {1, epoch}
""",
)

# KEYS: owner keys. ARGV[1]: ttl_ms, ARGV[i + 1]: our record for KEYS[i].
# Returns the 1-based indexes of keys that are no longer ours.
_REFRESH = LuaScript(
    "refresh",
    """
local lost = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
""",
)

# KEYS: owner_1, epoch_1, reclaim_1, owner_2, ... ARGV[1]: ttl_ms, ARGV[2], ARGV[3]: our
# owner record split around its epoch, then per host: record, epoch.
# The counter is first lifted to at least our epoch, so a store that restarted empty still
# fences. Then: ours: extend. Missing (expired during an outage, or the store restarted
# empty): ours again under a NEW epoch, unless the counter shows a newer connection was
# made meanwhile (then we are stale: lost). The new epoch matters: while the key was gone
# the presence reconciler may have reported this epoch's end (owner_expired), and only a
# newer epoch's Connected brings the host back online. The re-claim is noted in the
# reclaim key ("old:new", owner TTL), so running the same batch again (a pipeline resent
# after a lost reply, or a pass whose replies were lost) reports the same re-claim
# rather than mistaking our own new record for someone else's. Anything else: lost.
# Returns {lost indexes, {index, new epoch, ...}} (1-based indexes).
_REASSERT = LuaScript(
    "reassert",
    """
local lost, reclaimed = {}, {}
for i = 1, #KEYS / 3 do
  local owner_key, epoch_key, reclaim_key = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local record, epoch = ARGV[2 * i + 2], tonumber(ARGV[2 * i + 3])
  local current = redis.call('GET', owner_key)
  local counter = tonumber(redis.call('GET', epoch_key) or '0') or 0
  if counter < epoch then
    redis.call('SET', epoch_key, ARGV[2 * i + 3])
    counter = epoch
  end
  local again = nil
  if current and current ~= record then
    local from, to = string.match(redis.call('GET', reclaim_key) or '', '^(%d+):(%d+)$')
    if tonumber(from) == epoch and current == ARGV[2] .. to .. ARGV[3] then
      again = tonumber(to)
    end
  end
  if current == record then
    redis.call('PEXPIRE', owner_key, ARGV[1])
  elseif again then
    redis.call('PEXPIRE', owner_key, ARGV[1])
    reclaimed[#reclaimed + 1] = i
    reclaimed[#reclaimed + 1] = again
  elseif current == false and counter == epoch then
    local e = string.format('%d', redis.call('INCR', epoch_key))
    redis.call('SET', owner_key, ARGV[2] .. e .. ARGV[3], 'PX', ARGV[1])
    redis.call('SET', reclaim_key, ARGV[2 * i + 3] .. ':' .. e, 'PX', ARGV[1])
    reclaimed[#reclaimed + 1] = i
    reclaimed[#reclaimed + 1] = tonumber(e)
  else
    lost[#lost + 1] = i
  end
end
return {lost, reclaimed}
""",
)

# KEYS: owner. ARGV: our record. Deletes only our own record.
_RELEASE = LuaScript(
    "release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)


class Reasserted(msgspec.Struct):
    """What :meth:`OwnershipStore.reassert` found.

    ``lost``: hosts held by another or a newer connection now; their tunnels must close.
    ``reclaimed``: hosts whose record was missing and is ours again, under the new epoch
    given here; the tunnel takes that epoch and announces itself again.
    """

    lost: list[str] = msgspec.field(default_factory=list)
    reclaimed: dict[str, int] = msgspec.field(default_factory=dict)


def _split_at_epoch(encoded: bytes) -> tuple[bytes, bytes]:
    """Split the encoding of a record with ``epoch=0`` into the parts around the epoch."""
    marker = b'"epoch":0'
    at = encoded.rindex(marker) + len(marker) - 1  # epoch is the last field
    return encoded[:at], encoded[at + 1 :]


def _chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_ttl(ttl_ms: int) -> None:
    if ttl_ms <= 0:
        msg = f"an owner TTL must be a positive number of milliseconds, got {ttl_ms}"
        raise ValueError(msg)


class OwnershipStore:
    """Owner records of hosts in the store, under the names of ``keys``."""

    def __init__(self, redis: StoreClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def _batches(self, owned: Sequence[tuple[str, int]]) -> list[Sequence[tuple[str, int]]]:
        """``owned`` cut into script batches: per slot in cluster mode, then by size."""
        groups = by_slot(self._redis, owned, lambda item: self._keys.owner(item[0]))
        return [chunk for group in groups for chunk in _chunks(group)]

    async def claim(self, host_id: str, machine_id: str, ttl_ms: int) -> int:
        """Take ownership of ``host_id`` for a new connection; returns its fencing epoch.

        One round trip: INCR, conditional SET PX and PUBLISH of the takeover notice run in
        one script. Raises :class:`Superseded` if an owner with a newer epoch is present.
        """
        _check_ttl(ttl_ms)
        owner_head, owner_tail = _split_at_epoch(encode(OwnerRecord(machine_id, 0)))
        notice_head, notice_tail = _split_at_epoch(encode(TakeoverNotice(host_id, machine_id, 0)))
        keys = self._keys
        with translate_errors(f"claim host {host_id}"):
            reply = await _CLAIM(
                self._redis,
                [keys.epoch(host_id), keys.owner(host_id)],
                [
                    owner_head,
                    owner_tail,
                    ttl_ms,
                    keys.owner_channel(),
                    notice_head,
                    notice_tail,
                ],
            )
        won, epoch = int(reply[0]), int(reply[1])
        if not won:
            newer = decode(OwnerRecord, reply[2], where=keys.owner(host_id))
            raise Superseded(
                f"host {host_id} is held by machine {newer.machine_id} with epoch "
                f"{newer.epoch}, newer than this claim's {epoch}",
                machine_id=newer.machine_id,
                epoch=newer.epoch,
            )
        return epoch

    async def refresh(
        self, owned: Sequence[tuple[str, int]], machine_id: str, ttl_ms: int
    ) -> list[str]:
        """Extend the TTL of every ``(host_id, epoch)`` still ours; returns the hosts lost.

        All batches of :data:`BATCH_SIZE` (per slot in cluster mode) go out in one
        pipelined round trip (per node).
        """
        _check_ttl(ttl_ms)
        chunks = self._batches(owned)
        batches: list[KeyArgs] = [
            (
                [self._keys.owner(host_id) for host_id, _ in chunk],
                [ttl_ms, *(encode(OwnerRecord(machine_id, e)) for _, e in chunk)],
            )
            for chunk in chunks
        ]
        with translate_errors(f"refresh {len(owned)} owner records"):
            replies = await run_batches(self._redis, _REFRESH, batches)
        return _lost(chunks, replies)

    async def reassert(
        self, owned: Sequence[tuple[str, int]], machine_id: str, ttl_ms: int
    ) -> Reasserted:
        """After a store outage: extend our records, re-claim the missing ones.

        A missing record is written back under a new epoch (see :class:`Reasserted`);
        hosts another (or a newer) connection holds now are reported lost. Also lifts
        each epoch counter to at least our epoch, so a store that restarted empty keeps
        fencing. Safe to repeat with the same arguments: a re-claim already made is
        reported again, with the same new epoch. All batches go out in one pipelined
        round trip.
        """
        _check_ttl(ttl_ms)
        owner_head, owner_tail = _split_at_epoch(encode(OwnerRecord(machine_id, 0)))
        chunks = self._batches(owned)
        batches: list[KeyArgs] = []
        for chunk in chunks:
            keys: list[str] = []
            args: list[str | bytes | int] = [ttl_ms, owner_head, owner_tail]
            for host_id, epoch in chunk:
                k = self._keys
                keys += [k.owner(host_id), k.epoch(host_id), k.reclaim(host_id)]
                args += [encode(OwnerRecord(machine_id, epoch)), epoch]
            batches.append((keys, args))
        with translate_errors(f"reassert {len(owned)} owner records"):
            replies = await run_batches(self._redis, _REASSERT, batches)
        result = Reasserted()
        for chunk, reply in zip(chunks, replies, strict=True):
            if not (isinstance(reply, list) and len(reply) == 2):  # {lost, reclaimed}
                raise StoreError(f"unexpected reply from the reassert script: {reply!r}")
            lost, reclaimed = reply
            result.lost += _lost([chunk], [lost])
            pairs = iter(reclaimed)
            for index, epoch in zip(pairs, pairs, strict=True):
                result.reclaimed[chunk[int(index) - 1][0]] = int(epoch)
        return result

    async def release(self, host_id: str, machine_id: str, epoch: int) -> bool:
        """Delete the owner record if it is still exactly ours; True if it was deleted."""
        with translate_errors(f"release host {host_id}"):
            deleted = await _RELEASE(
                self._redis,
                [self._keys.owner(host_id)],
                [encode(OwnerRecord(machine_id, epoch))],
            )
        return bool(deleted)

    async def owner(self, host_id: str) -> OwnerRecord | None:
        """The current owner of ``host_id``, or None when no live tunnel holds it."""
        key = self._keys.owner(host_id)
        with translate_errors(f"read owner of {host_id}"):
            raw = await self._redis.get(key)
        return None if raw is None else decode(OwnerRecord, raw, where=key)

    async def owners(self, host_ids: Sequence[str]) -> dict[str, OwnerRecord | None]:
        """The owners of many hosts, in one MGET."""
        if not host_ids:
            return {}
        keys = [self._keys.owner(h) for h in host_ids]
        with translate_errors(f"read owners of {len(host_ids)} hosts"):
            raws = await mget(self._redis, keys)
        return {
            host_id: None if raw is None else decode(OwnerRecord, raw, where=key)
            for host_id, key, raw in zip(host_ids, keys, raws, strict=True)
        }

    async def takeovers(self) -> AsyncIterator[TakeoverNotice]:
        """Takeover notices as they are published, until the subscription fails.

        redis-py reconnects and resubscribes within its retry budget; beyond that this
        raises :class:`~directory.errors.StoreUnavailable` and the caller subscribes again
        (after a backoff). Notices published while disconnected are lost, which is why
        :meth:`refresh` also reports lost hosts: the notice is the fast path, the refresh
        the guarantee. A malformed message is logged and skipped. Close the iterator
        (``contextlib.aclosing``) to unsubscribe at once rather than at garbage collection.
        """
        channel = self._keys.owner_channel()
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            with translate_errors("subscribe to takeover notices"):
                await pubsub.subscribe(channel)
            while True:
                with translate_errors("read takeover notices"):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_PUBSUB_POLL
                    )
                if message is None or message.get("type") != "message":
                    continue
                try:
                    notice = decode(TakeoverNotice, message["data"], where=channel)
                except CorruptRecord as exc:
                    _log.warning("ownership.bad_takeover_notice", error=str(exc))
                    continue
                yield notice
        finally:
            with translate_errors("unsubscribe from takeover notices"):
                # redis-py leaves PubSub.aclose unannotated.
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _lost(chunks: Sequence[Sequence[tuple[str, int]]], replies: Sequence[Any]) -> list[str]:
    """Map each batch's 1-based lost indexes back to host ids."""
    lost: list[str] = []
    for chunk, reply in zip(chunks, replies, strict=True):
        if not isinstance(reply, list):
            raise StoreError(f"unexpected reply from an ownership script: {reply!r}")
        lost += [chunk[int(i) - 1][0] for i in reply]
    return lost
