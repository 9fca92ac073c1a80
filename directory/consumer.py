"""Consumer groups over the event log: at-least-once delivery, reclaim, dead letters.

One :class:`StreamConsumer` per (group, machine). Its loop:

1. At start (and after an outage) it re-reads its *own* pending entries (``XREADGROUP``
   with id ``0``): what it had read but not acknowledged when it stopped.
2. Every ``claim_interval`` it takes over entries pending longer than ``claim_idle``
   (``XAUTOCLAIM``): entries of a consumer that died mid-batch, and its own entries whose
   handler failed. Each is retried; one delivered more than ``max_deliveries`` times is
   poison.
3. Otherwise it block-reads new entries (``XREADGROUP >``, ``BLOCK block_ms``): an entry
   appended now is handled within milliseconds, the short block only bounds how long a
   reclaim or a close waits.

Each batch goes to the handler; entries are acknowledged (``XACK``) only after it returns,
so a crash re-delivers rather than loses (handlers are idempotent). A batch that fails is
retried entry by entry, so one bad entry never holds the others back. Entries of unknown
kinds are acknowledged and counted. Poison (an entry that does not decode, or whose
handler failed ``max_deliveries`` times) is parked in the dead-letter stream
``p:{events}:dead`` with its original fields, the group and the error, acknowledged,
counted (``relay_events_dead_lettered_total``) and logged (``events.dead_lettered``).

A store outage (:class:`~directory.errors.StoreUnavailable`) is not the entries' fault: the
loop backs off and retries them, and they never count toward poison by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import structlog
from redis.exceptions import ResponseError

from directory._scripts import LuaScript, pack_strings
from directory.errors import CorruptRecord, DirectoryError, StoreUnavailable
from directory.events import AnyEvent, decode_entry
from directory.stats import STATS, Stats
from directory.store import translate_errors

if TYPE_CHECKING:
    from directory.keys import Keys
    from directory.store import StoreClient

__all__ = ["BatchHandler", "Handler", "StreamConsumer"]

Handler: TypeAlias = Callable[[str, AnyEvent], Awaitable[None]]
BatchHandler: TypeAlias = Callable[[Sequence[tuple[str, AnyEvent]]], Awaitable[object]]

_Entry = tuple[str, dict[bytes, bytes]]

_MAX_BACKOFF = 5.0

# KEYS: the stream. ARGV[1]: the group, ARGV[2]: a MessagePack array of entry ids.
# One packed argument instead of one per id (the client's packing of hundreds of
# arguments costs more than the acknowledgement itself). Returns how many were pending.
_ACK = LuaScript(
    "events_ack",
    """
local ids = cmsgpack.unpack(ARGV[2])
local acked = 0
for i = 1, #ids, 1000 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 999, #ids)))
end
return acked
""",
)
# Dead letters are for people to read; a few thousand is plenty and bounds the memory.
DEAD_LETTER_MAXLEN = 10_000

_log = structlog.get_logger("directory.consumer")


def _id_ms(entry_id: str) -> int:
    """The log time (ms since the epoch) a stream entry id carries: ``<ms>-<seq>``."""
    return int(entry_id.partition("-")[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamConsumer:
    """A member ``consumer_name`` of consumer group ``group`` on the event log.

    Give either ``handler(entry_id, event)`` (called per entry, in order) or
    ``batch_handler(entries)`` (called with a whole batch: one store round trip for many
    events). Lifecycle: :meth:`start` once, :meth:`close` once; a closed consumer refuses
    to start again. :meth:`step` runs one iteration (for tests and tools).
    """

    def __init__(  # noqa: PLR0913 - tuning knobs, all keyword-only with defaults
        self,
        redis: StoreClient,
        keys: Keys,
        group: str,
        consumer_name: str,
        handler: Handler | None = None,
        *,
        batch_handler: BatchHandler | None = None,
        batch_size: int = 500,
        block_ms: int = 200,
        claim_idle: float = 30.0,
        claim_interval: float | None = None,
        max_deliveries: int = 5,
        start_id: str = "0",
        stats: Stats = STATS,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        self._redis = redis
        self._stream = keys.events()
        self._dead = keys.dead_letters()
        self.group = group
        self.name = consumer_name
        self._handle_one = handler
        self._handle_batch = batch_handler
        self._batch = batch_size
        self._block_ms = block_ms
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._claim_interval = claim_interval if claim_interval is not None else claim_idle / 2
        self._max_deliveries = max_deliveries
        self._start_id = start_id
        self._stats = stats
        # Exported from the start at zero: an alert on them has a series before the first.
        for name in ("relay_events_applied_total", "relay_events_dead_lettered_total"):
            stats.incr(name, 0, group=group)
        # Log time (ms, from the entry id) of the oldest entry of the batch in hand; None
        # between batches. A batch that fails (store down, a bug) leaves it set, so the
        # lag grows until the entries are handled. See lag_seconds().
        self._behind_ms: int | None = None
        self._group_ready = False
        # Walk our own pending entries once (what we held before a restart or an outage).
        self._own_pending: str | None = "0"
        self._next_claim = 0.0
        self._state = "new"
        self._task: asyncio.Task[None] | None = None
        self._log = _log.bind(group=group, consumer=consumer_name)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run the loop in a background task (once)."""
        if self._state != "new":
            raise RuntimeError(f"consumer {self.group}/{self.name} is {self._state}")
        self._state = "running"
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"consumer-{self.group}"
        )
        return self._task

    async def close(self) -> None:
        """Stop the loop (pending entries stay pending for a reclaim). Idempotent."""
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.05
        while self._state == "running":
            try:
                await self.step()
            except DirectoryError as exc:
                if isinstance(exc, StoreUnavailable):
                    self._own_pending = "0"  # what we were handling is still ours
                self._stats.incr("relay_events_consumer_errors_total", group=self.group, op="loop")
                self._log.warning(
                    "events.consumer_failed", error=str(exc), retry_in_s=round(backoff, 3)
                )
            except Exception:  # noqa: BLE001 - a bug here must not silently end the group
                self._stats.incr("relay_events_consumer_errors_total", group=self.group, op="crash")
                self._log.exception("events.consumer_crashed", retry_in_s=round(backoff, 3))
            else:
                backoff = 0.05
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def lag_seconds(self, now: float | None = None) -> float:
        """Seconds this member is behind the log (0 between batches).

        The age of the oldest entry of the batch in hand: it grows while a batch is stuck.

        The age is measured against the entry id's time, which the store's clock sets:
        skew between that clock and ours shifts it (never below 0).
        """
        if self._behind_ms is None:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, now - self._behind_ms / 1000)

    # --- one iteration -------------------------------------------------------------------

    async def step(self) -> int:
        """Handle one batch: own pending, else reclaimed, else new. Returns entries seen."""
        if self._state == "closed":
            raise RuntimeError(f"consumer {self.group}/{self.name} is closed")
        if not self._group_ready:
            await self._ensure_group()
        if self._own_pending is not None:
            entries = await self._read_group(self._own_pending, block=None)
            if entries:
                self._behind(entries)
                # Once through; what fails again waits for a reclaim like any failure.
                self._own_pending = entries[-1][0]
                await self._retry(entries)
                self._behind_ms = None
                return len(entries)
            self._own_pending = None
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._claim_interval
            claimed = await self.reclaim()
            if claimed:
                return claimed
        entries = await self._read_group(">", block=self._block_ms)
        if entries:
            self._behind(entries)
            await self._process(entries)
            self._behind_ms = None
        return len(entries)

    async def reclaim(self) -> int:
        """Take over entries pending longer than ``claim_idle`` (XAUTOCLAIM); returns count."""
        with translate_errors(f"reclaim stuck entries of group {self.group}"):
            reply: Any = await self._redis.xautoclaim(
                self._stream, self.group, self.name, self._claim_idle_ms, "0-0", count=self._batch
            )
        entries = [(_text(i), f) for i, f in reply[1] if f is not None]
        trimmed = reply[2] if len(reply) > 2 else []  # Redis 7+ adds the deleted ids
        if trimmed:
            # Trimmed away before anyone handled them: MAXLEN is too small for the lag.
            self._stats.incr("relay_events_trimmed_pending_total", len(trimmed), group=self.group)
            self._log.warning("events.pending_trimmed", entries=len(trimmed))
        if entries:
            self._behind(entries)
            self._stats.incr("relay_events_reclaimed_total", len(entries), group=self.group)
            self._log.info("events.reclaimed", entries=len(entries), first=entries[0][0])
            await self._retry(entries)
            self._behind_ms = None
        return len(entries)

    # --- internals -----------------------------------------------------------------------

    def _behind(self, entries: list[_Entry]) -> None:
        """A batch about to be handled: its oldest entry's log time sets the lag."""
        self._behind_ms = _id_ms(entries[0][0])

    async def _ensure_group(self) -> None:
        with translate_errors(f"create consumer group {self.group}"):
            try:
                await self._redis.xgroup_create(
                    self._stream, self.group, id=self._start_id, mkstream=True
                )
                self._log.info("events.group_created", start_id=self._start_id)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    async def _read_group(self, last_id: str, *, block: int | None) -> list[_Entry]:
        with translate_errors(f"read the event log for group {self.group}"):
            try:
                reply: Any = await self._redis.xreadgroup(
                    self.group, self.name, {self._stream: last_id}, count=self._batch, block=block
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group was deleted under us (FLUSHALL, a manual fix).
                self._group_ready = False
                self._stats.incr(
                    "relay_events_consumer_errors_total", group=self.group, op="no_group"
                )
                self._log.warning("events.group_missing")
                return []
        if not reply:
            return []
        # Entries whose body was trimmed while pending come back as (id, None).
        return [(_text(i), f) for i, f in reply[0][1] if f is not None]

    async def _retry(self, entries: list[_Entry]) -> None:
        """Entries delivered before: park those delivered too often, handle the rest."""
        counts = await self._deliveries([i for i, _ in entries])
        fresh: list[_Entry] = []
        for entry_id, fields in entries:
            deliveries = counts.get(entry_id, 1)
            if deliveries > self._max_deliveries:
                await self._dead_letter(
                    entry_id, fields, f"handler failed {deliveries - 1} times", deliveries
                )
            else:
                fresh.append((entry_id, fields))
        await self._process(fresh)

    async def _deliveries(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        # One exact XPENDING per id, pipelined (one round trip): a range query could be cut
        # short by other pending entries of ours between the ids.
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self._stream, self.group, entry_id, entry_id, 1, self.name)
        with translate_errors(f"read delivery counts of group {self.group}"):
            replies: list[Any] = await pipe.execute()
        return {
            _text(p["message_id"]): int(p["times_delivered"]) for reply in replies for p in reply
        }

    async def _process(self, entries: Sequence[_Entry]) -> None:
        if not entries:
            return
        decoded: list[tuple[str, AnyEvent]] = []
        done: list[str] = []
        for entry_id, fields in entries:
            try:
                event = decode_entry(entry_id, fields)
            except CorruptRecord as exc:
                await self._dead_letter(entry_id, fields, str(exc), 1)
                continue
            if event is None:
                self._stats.incr("relay_events_unknown_skipped_total")
                self._log.debug("events.unknown_kind_skipped", entry_id=entry_id)
                done.append(entry_id)
                continue
            decoded.append((entry_id, event))
        done += await self._handle(decoded)
        await self._ack(done)

    async def _handle(self, batch: list[tuple[str, AnyEvent]]) -> list[str]:
        """Run the handler; returns the ids it handled. Store outages propagate."""
        if not batch:
            return []
        if self._handle_batch is None or len(batch) == 1:
            return await self._handle_each(batch)
        try:
            await self._handle_batch(batch)
        except StoreUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a handler bug must not stop the group
            # Find the bad entries: one at a time, so the others flow.
            return await self._handle_each(batch)
        self._stats.incr("relay_events_applied_total", len(batch), group=self.group)
        return [entry_id for entry_id, _ in batch]

    async def _handle_each(self, batch: list[tuple[str, AnyEvent]]) -> list[str]:
        handled: list[str] = []
        for entry_id, event in batch:
            try:
                if self._handle_one is not None:
                    await self._handle_one(entry_id, event)
                elif self._handle_batch is not None:
                    await self._handle_batch([(entry_id, event)])
            except StoreUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the group
                self._handler_failed(entry_id, exc)
                continue
            handled.append(entry_id)
        self._stats.incr("relay_events_applied_total", len(handled), group=self.group)
        return handled

    def _handler_failed(self, entry_id: str, exc: Exception) -> None:
        self._stats.incr("relay_events_handler_errors_total", group=self.group)
        self._log.warning(
            "events.handler_failed",
            entry_id=entry_id,
            error=f"{type(exc).__name__}: {exc}",
            retry_after_s=self._claim_idle_ms / 1000,
        )

    async def _ack(self, ids: list[str]) -> None:
        if not ids:
            return
        with translate_errors(f"acknowledge {len(ids)} entries of group {self.group}"):
            await _ACK(self._redis, [self._stream], [self.group, pack_strings(ids)])

    async def _dead_letter(
        self, entry_id: str, fields: dict[bytes, bytes], error: str, deliveries: int
    ) -> None:
        parked: dict[Any, Any] = dict(fields)
        parked.update(
            {
                b"id": entry_id,
                b"group": self.group,
                b"consumer": self.name,
                b"error": error[:1000],
                b"deliveries": deliveries,
                b"parked_at": repr(time.time()),
            }
        )
        # Park and acknowledge together: never both parked and still pending, nor lost.
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self._dead, parked, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(self._stream, self.group, entry_id)
        with translate_errors(f"park entry {entry_id} as a dead letter"):
            await pipe.execute()
        self._stats.incr("relay_events_dead_lettered_total", group=self.group)
        self._log.error(
            "events.dead_lettered",
            entry_id=entry_id,
            error=error,
            deliveries=deliveries,
            dead_letters=self._dead,
        )
