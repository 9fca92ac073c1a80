"""What the DNS work keeps in the store: per-host status and cache, dirty set, locks, lease.

Layout (``p`` is the deployment's key prefix; the hash tags are explained in
:mod:`directory.keys`)::

    p:{h:<host_id>}:dns       hash     state, records (JSON, what we last wrote or saw at the
                                       provider: the cached actual state), last_error,
                                       last_error_at, updated_at, failures and retry_at (a
                                       failing host waits before its next converge)
    p:{h:<host_id>}:dns-lock  string   a worker converging the host now (PX)
    p:{dns}:hosts             set      host ids that have such a hash (removed hosts
                                       included until their records are gone)
    p:{dns}:dirty             set      host ids to converge (events only add here)
    p:{dns}:lease             string   the machine running sweeps and scheduled syncs (PX)
    p:{dns}:rate              hash     the shared token bucket (directory.dns.ratelimit)
    p:{dns}:rate-pause        string   set while a provider's 429 holds everyone (PX)

The scripts over many hosts (defer, unlock) run once per hash slot in Redis Cluster.

The cache is what makes churn free: a converge compares the wanted records with the
cached ones and calls the provider only when they differ. A hash without ``records``
means "unknown", and the next converge reads the provider before writing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal, cast

import msgspec

from directory._scripts import LuaScript, by_slot, run_batches
from directory.dns.records import DnsRecord
from directory.errors import CorruptRecord
from directory.store import translate_errors

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = ["DnsKeys", "DnsState", "DnsStateStore", "HostDnsState"]

DnsState = Literal["ok", "pending", "error", "disabled"]
_STATES = frozenset({"ok", "pending", "error", "disabled"})

_records_encoder = msgspec.json.Encoder()
_records_decoder = msgspec.json.Decoder(tuple[DnsRecord, ...])

# KEYS: lock/lease. ARGV: holder, ttl ms. Take it if free, extend it if ours.
_HOLD = LuaScript(
    "dns_hold",
    """
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""",
)

# KEYS: locks. ARGV: holder. Deletes the ones still ours.
_RELEASE = LuaScript(
    "dns_release",
    """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
  end
end
return 0
""",
)


# KEYS: host hashes. ARGV: now, base, cap (seconds). One more failure each; the next try
# waits base * 2^(failures - 1), at most cap.
_DEFER = LuaScript(
    "dns_defer",
    """
for i = 1, #KEYS do
  local n = redis.call('HINCRBY', KEYS[i], 'failures', 1)
  local delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (n - 1))
  redis.call('HSET', KEYS[i], 'retry_at', tostring(tonumber(ARGV[1]) + delay))
end
return 0
""",
)


class DnsKeys:
    """Key names of the DNS work (named in :mod:`directory.keys`, like every key)."""

    def __init__(self, keys: Keys) -> None:
        self.prefix = keys.prefix
        self._keys = keys

    def host(self, host_id: str) -> str:
        """A host's DNS status and cached records."""
        return self._keys.host_dns(host_id)

    def hosts(self) -> str:
        """Host ids with a DNS hash."""
        return self._keys.dns("hosts")

    def dirty(self) -> str:
        """Host ids waiting to be converged."""
        return self._keys.dns("dirty")

    def lock(self, host_id: str) -> str:
        """A worker's hold on one host while converging it."""
        return self._keys.host_dns_lock(host_id)

    def lease(self) -> str:
        """The lease of the machine that sweeps and syncs on schedule."""
        return self._keys.dns("lease")

    def rate(self) -> str:
        """The shared token bucket."""
        return self._keys.dns("rate")

    def rate_pause(self) -> str:
        """Set while a 429 pauses every machine."""
        return self._keys.dns("rate-pause")


class HostDnsState(msgspec.Struct, frozen=True, kw_only=True):
    """A host's DNS status. ``records`` is None when the cache is unknown."""

    state: DnsState = "pending"
    records: tuple[DnsRecord, ...] | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    updated_at: float | None = None
    retry_at: float | None = None

    def deferred(self, now: float) -> bool:
        """Whether a failing host still waits before its next converge."""
        return self.state == "error" and self.retry_at is not None and now < self.retry_at


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _parse(key: str, raw: dict[bytes, bytes]) -> HostDnsState | None:
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        records = fields.get("records")
        state = fields.get("state") or "pending"
        if state not in _STATES:
            raise CorruptRecord(f"DNS state at {key} is {state!r}")
        error_at = fields.get("last_error_at")
        updated = fields.get("updated_at")
        retry_at = fields.get("retry_at")
        return HostDnsState(
            state=cast("DnsState", state),
            records=None if records is None else _records_decoder.decode(records),
            last_error=fields.get("last_error") or None,
            last_error_at=float(error_at) if error_at else None,
            updated_at=float(updated) if updated else None,
            retry_at=float(retry_at) if retry_at else None,
        )
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise CorruptRecord(f"DNS state at {key} does not decode: {exc}") from exc


class DnsStateStore:
    """The DNS keys of one deployment in the store."""

    def __init__(self, redis: StoreClient, keys: Keys) -> None:
        self._redis = redis
        self.keys = DnsKeys(keys)

    async def get_many(self, host_ids: Sequence[str]) -> dict[str, HostDnsState | None]:
        """The DNS state of each host (None: never converged), in one round trip."""
        if not host_ids:
            return {}
        with translate_errors(f"read DNS state of {len(host_ids)} hosts"):
            pipe = self._redis.pipeline(transaction=False)
            for host_id in host_ids:
                pipe.hgetall(self.keys.host(host_id))
            raws = await pipe.execute()
        return {
            host_id: _parse(self.keys.host(host_id), raw)
            for host_id, raw in zip(host_ids, raws, strict=True)
        }

    async def set_ok(self, results: Mapping[str, Sequence[DnsRecord]]) -> None:
        """Hosts converged: cache their records (as written) and mark them ok."""
        if not results:
            return
        now = repr(time.time())
        with translate_errors(f"store DNS state of {len(results)} hosts"):
            pipe = self._redis.pipeline(transaction=False)
            for host_id, records in results.items():
                mapping = {
                    "state": "ok",
                    "records": _records_encoder.encode(tuple(records)),
                    "updated_at": now,
                }
                pipe.hset(self.keys.host(host_id), mapping=mapping)  # type: ignore[arg-type]
                pipe.hdel(self.keys.host(host_id), "failures", "retry_at")
            pipe.sadd(self.keys.hosts(), *results)
            await pipe.execute()

    async def set_error(
        self, host_ids: Sequence[str], message: str, *, at: float, forget_cache: bool = False
    ) -> None:
        """Record a failure on each host at once (the status shows it within a second).

        ``forget_cache`` drops the cached records, so the next attempt reads the provider
        (after a failure we no longer know for sure what it holds).
        """
        if not host_ids:
            return
        mapping = {"state": "error", "last_error": message[:500], "last_error_at": repr(at)}
        with translate_errors(f"store a DNS error on {len(host_ids)} hosts"):
            pipe = self._redis.pipeline(transaction=False)
            for host_id in host_ids:
                pipe.hset(self.keys.host(host_id), mapping=mapping)  # type: ignore[arg-type]
                if forget_cache:
                    pipe.hdel(self.keys.host(host_id), "records")
            pipe.sadd(self.keys.hosts(), *host_ids)
            await pipe.execute()

    async def defer(self, host_ids: Sequence[str], *, base: float, cap: float) -> None:
        """Make failing hosts wait before their next converge, longer after each failure.

        A host that keeps failing (a conflict, a provider outage) would otherwise cost API
        calls on every sweep; the full sync still looks at it on its own schedule.
        """
        args = [repr(time.time()), repr(base), repr(cap)]
        groups = by_slot(self._redis, host_ids, self.keys.host)
        with translate_errors(f"defer {len(host_ids)} failing hosts"):
            await run_batches(
                self._redis, _DEFER, [([self.keys.host(h) for h in g], args) for g in groups]
            )

    async def invalidate(self, host_ids: Sequence[str]) -> None:
        """Drop the cached records (keep the status): the next converge reads the provider."""
        if not host_ids:
            return
        with translate_errors(f"invalidate DNS cache of {len(host_ids)} hosts"):
            pipe = self._redis.pipeline(transaction=False)
            for host_id in host_ids:
                pipe.hdel(self.keys.host(host_id), "records")
            await pipe.execute()

    async def forget(self, host_ids: Sequence[str]) -> None:
        """Drop the state of hosts that are gone and whose records are deleted."""
        if not host_ids:
            return
        with translate_errors(f"forget DNS state of {len(host_ids)} hosts"):
            pipe = self._redis.pipeline(transaction=False)
            for host_id in host_ids:  # one DEL each: in a cluster each has its own slot
                pipe.delete(self.keys.host(host_id))
            pipe.srem(self.keys.hosts(), *host_ids)
            await pipe.execute()

    async def tracked(self) -> list[str]:
        """Every host id with a DNS hash."""
        with translate_errors("list hosts with DNS state"):
            members = await self._redis.smembers(self.keys.hosts())
        return sorted(_text(m) or "" for m in members)

    async def mark_dirty(self, host_ids: Sequence[str]) -> None:
        """Ask for these hosts to be converged (by any machine's worker)."""
        if host_ids:
            with translate_errors("mark hosts dirty for DNS"):
                await self._redis.sadd(self.keys.dirty(), *host_ids)

    async def pop_dirty(self, count: int) -> list[str]:
        """Take up to ``count`` dirty hosts (each goes to exactly one caller)."""
        with translate_errors("take dirty hosts"):
            popped = await self._redis.spop(self.keys.dirty(), count)
        # With a count SPOP always answers a list (empty when the set is empty).
        return [_text(p) or "" for p in cast("list[bytes]", popped or [])]

    async def dirty_count(self) -> int:
        """How many hosts wait to be converged."""
        with translate_errors("count dirty hosts"):
            return int(await self._redis.scard(self.keys.dirty()))

    async def lock(self, host_ids: Sequence[str], holder: str, ttl_ms: int) -> list[str]:
        """Lock the hosts no other worker is converging; returns those locked."""
        if not host_ids:
            return []
        with translate_errors(f"lock {len(host_ids)} hosts for DNS"):
            pipe = self._redis.pipeline(transaction=False)
            for host_id in host_ids:
                pipe.set(self.keys.lock(host_id), holder, nx=True, px=ttl_ms)
            replies = await pipe.execute()
        return [h for h, ok in zip(host_ids, replies, strict=True) if ok]

    async def unlock(self, host_ids: Sequence[str], holder: str) -> None:
        """Release our locks (never another worker's)."""
        groups = by_slot(self._redis, host_ids, self.keys.lock)
        with translate_errors("unlock hosts"):
            await run_batches(
                self._redis, _RELEASE, [([self.keys.lock(h) for h in g], [holder]) for g in groups]
            )

    async def hold_lease(self, holder: str, ttl_ms: int) -> bool:
        """Take or extend the lease of the machine that sweeps and syncs on schedule."""
        with translate_errors("hold the DNS lease"):
            return bool(await _HOLD(self._redis, [self.keys.lease()], [holder, ttl_ms]))
