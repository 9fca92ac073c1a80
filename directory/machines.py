"""Relay machines: a liveness record per machine with a native TTL, and the cluster secret.

Each machine rewrites its record every ping interval with ``PX`` = owner TTL, so a machine
that dies without a word disappears on its own; nobody sweeps records. The index (a sorted
set by last-seen time) only helps listing; entries whose record expired are skipped and
trimmed by age.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Literal

import msgspec

from directory.errors import CorruptRecord
from directory.store import translate_errors

if TYPE_CHECKING:
    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = ["MachineRecord", "MachineRegistry", "MachineState"]

MachineState = Literal["running", "draining", "stopped"]

_INDEX_RETENTION_S = 24 * 3600  # forget machines unseen for a day from the listing index


class MachineRecord(msgspec.Struct, frozen=True, tag_field="kind", tag="machine"):
    """What a machine says about itself: where to reach it and how it is doing."""

    machine_id: str
    address: str
    state: MachineState
    tunnels: int
    last_seen: float
    version: int = 1


_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(MachineRecord)


def _decode(data: bytes | str, where: str) -> MachineRecord:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(f"stored machine record at {where} does not decode: {exc}") from exc


class MachineRegistry:
    """Liveness records of relay machines."""

    def __init__(self, redis: StoreClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def heartbeat(
        self, machine_id: str, address: str, state: MachineState, tunnels: int, ttl_ms: int
    ) -> MachineRecord:
        """Write this machine's record with a fresh TTL (one round trip)."""
        record = MachineRecord(machine_id, address, state, tunnels, time.time())
        async with translate_errors(f"heartbeat of machine {machine_id}"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(self._keys.machine(machine_id), _encode(record), px=ttl_ms)
            pipe.zadd(self._keys.machines_index(), {machine_id: record.last_seen})
            pipe.zremrangebyscore(
                self._keys.machines_index(), "-inf", record.last_seen - _INDEX_RETENTION_S
            )
            await pipe.execute()
        return record

    async def remove(self, machine_id: str) -> None:
        """Drop this machine's record at a clean stop."""
        async with translate_errors(f"remove machine {machine_id}"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self._keys.machine(machine_id))
            pipe.zrem(self._keys.machines_index(), machine_id)
            await pipe.execute()

    async def get(self, machine_id: str) -> MachineRecord | None:
        """The live record of a machine, or None when it expired (the machine is gone)."""
        key = self._keys.machine(machine_id)
        async with translate_errors(f"read machine {machine_id}"):
            data = await self._redis.get(key)
        return None if data is None else _decode(data, key)

    async def list(self) -> list[MachineRecord]:
        """Every live machine, most recently seen first (two round trips)."""
        async with translate_errors("list machines"):
            ids = await self._redis.zrevrange(self._keys.machines_index(), 0, -1)
            if not ids:
                return []
            names = [self._keys.machine(_text(i)) for i in ids]
            values = await self._redis.mget(names)
        return [_decode(v, k) for k, v in zip(names, values, strict=True) if v is not None]

    async def cluster_secret(self) -> str:
        """The cluster's shared secret: the first machine to ask creates it (SET NX)."""
        key = self._keys.cluster_secret()
        async with translate_errors("read cluster secret"):
            await self._redis.set(key, secrets.token_urlsafe(32), nx=True)
            value = await self._redis.get(key)
        if value is None:
            raise CorruptRecord(f"cluster secret at {key} vanished right after it was set")
        return _text(value)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
