"""Lua scripts run by SHA, with the NOSCRIPT fallback a restarted store needs.

A store that restarted (or ran ``SCRIPT FLUSH``) has forgotten every loaded script, so
each call tries ``EVALSHA`` first (the script body is not resent on the hot path) and, on
``NOSCRIPT``, loads the script and runs it again. Scripts given to :func:`run_batches` must
be idempotent, because a batch that failed with NOSCRIPT is sent a second time.

We do not use redis-py's ``register_script`` with pipelines: its pipeline path sends
``SCRIPT EXISTS`` before every execute, a second round trip per refresh cycle.

In Redis Cluster every node has its own script cache (``SCRIPT LOAD`` goes to all
primaries), and a script's keys must share a slot: :func:`by_slot` cuts work over many
hosts into per-slot groups there, and leaves it whole on a single server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

if TYPE_CHECKING:
    from directory.store import StoreClient

__all__ = ["LuaScript", "by_slot", "pack_strings", "run_batches"]

KeyArgs = tuple[Sequence[str], Sequence[str | bytes | int]]
T = TypeVar("T")


def by_slot(client: StoreClient, items: Sequence[T], key: Callable[[T], str]) -> list[list[T]]:
    """``items`` grouped by the hash slot of ``key(item)``, in order (one group per slot).

    On a single server everything is one group: there a script may name any keys, and
    one call per batch of hundreds of hosts is what keeps a refresh cheap. In a cluster a
    script may only name keys of one slot; hosts spread over all slots, so a batch there
    is mostly a single host (still one pipelined round trip per node).
    """
    if not isinstance(client, RedisCluster):
        return [list(items)] if items else []
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(client.keyslot(key(item)), []).append(item)
    return list(groups.values())


class LuaScript:
    """One Lua script, known to the store by the SHA1 of its source."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # SHA1 is what the store names scripts by; it is an identifier, not a safeguard.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self,
        client: StoreClient,
        keys: Sequence[str],
        args: Sequence[str | bytes | int],
    ) -> Any:  # noqa: ANN401 - a Lua reply has whatever shape the script returns
        """Run the script once (one round trip unless the store lost it)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs it and caches it again under the same SHA.
            return await client.eval(self.source, len(keys), *keys, *args)


async def run_batches(
    client: StoreClient, script: LuaScript, batches: Sequence[KeyArgs]
) -> list[Any]:
    """Run ``script`` once per batch, all batches in ONE pipelined round trip.

    Returns one reply per batch, in order. If the store lost the script, it is loaded and
    only the batches that failed are sent again (a second round trip, once after a
    restart). Any other error reply is raised (as the redis error; callers translate it).
    """
    if not batches:
        return []
    replies: list[Any] = [None] * len(batches)
    pending = list(range(len(batches)))
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for index in pending:
            keys, args = batches[index]
            # Not pipe.evalsha: redis-py's cluster pipeline refuses that method by name,
            # while it routes the raw command by its keys like any other.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results = await pipe.execute(raise_on_error=False)
        missing: list[int] = []
        for index, result in zip(pending, results, strict=True):
            if isinstance(result, NoScriptError) and attempt == 0:
                missing.append(index)
            elif isinstance(result, RedisError):
                raise result
            else:
                replies[index] = result
        if not missing:
            break
        await client.script_load(script.source)
        pending = missing
    return replies


def pack_strings(items: Sequence[bytes | str]) -> bytes:
    """A MessagePack array of ``items`` as raw strings, for a script's ``cmsgpack.unpack``.

    The store's cmsgpack rejects MessagePack's binary type, and a bytes value need not be
    UTF-8, so each item is written with a *str* header around its bytes as they are (Lua
    strings are byte strings). One such argument replaces one argument per item: the
    client's packing of arguments costs more than a script's work.
    """
    n = len(items)
    if n < 16:
        out = [bytes((0x90 | n,))]
    elif n < 0x10000:
        out = [b"\xdc" + n.to_bytes(2, "big")]
    else:
        out = [b"\xdd" + n.to_bytes(4, "big")]
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        size = len(data)
        if size < 32:
            out.append(bytes((0xA0 | size,)))
        elif size < 0x100:
            out.append(b"\xd9" + bytes((size,)))
        elif size < 0x10000:
            out.append(b"\xda" + size.to_bytes(2, "big"))
        else:
            out.append(b"\xdb" + size.to_bytes(4, "big"))
        out.append(data)
    return b"".join(out)
