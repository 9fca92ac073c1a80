"""The relay's event plumbing: emit tunnel events, keep presence projected and honest.

* :class:`EventEmitter` — ``emit()`` never blocks and never fails: events go to a bounded
  in-memory outbox that a background task flushes to the log in pipelined batches (one
  round trip per batch). While the store is unreachable the outbox keeps them, in order,
  and the flusher retries with backoff; on recovery it flushes and says so. When the
  outbox is full the *oldest* event is dropped (newer events supersede older ones in
  every fold), counted in ``relay_events_dropped_total`` and logged: never silently.
* :class:`EventServices` — what ``relay serve`` runs: the emitter, the presence consumer
  (consumer group ``presence``, one member per machine) and the reconciler (one machine
  at a time, under a lease).
* :func:`tunnel_connected` / :func:`tunnel_disconnected` — the tunnel endpoint's two
  calls, with the close code mapped to a reason by :func:`disconnect_reason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from directory.consumer import StreamConsumer
from directory.errors import DirectoryError
from directory.events import (
    Connected,
    Disconnected,
    DisconnectReason,
    MachineDraining,
    MachineStarted,
    MachineStopped,
    RedisEventLog,
)
from directory.ownership import OwnershipStore
from directory.presence import PresenceStore
from directory.reconciler import PresenceReconciler
from directory.stats import METRIC_DESCRIPTIONS, STATS, Stats
from relay.logs import get_logger
from relay.wire.protocol import CloseCode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from opentelemetry.metrics import Meter

    from directory.events import AnyEvent, EventLog
    from directory.keys import Keys
    from directory.store import StoreClient
    from relay.config import ServeConfig
    from relay.machine.tunnels import Tunnel

__all__ = [
    "PRESENCE_GROUP",
    "EventEmitter",
    "EventServices",
    "disconnect_reason",
    "register_event_metrics",
    "tunnel_connected",
    "tunnel_disconnected",
]

PRESENCE_GROUP = "presence"
# Block-read time of the presence consumer: an entry is handled as soon as it lands; this
# only bounds how late a reclaim or a shutdown is noticed.
PRESENCE_BLOCK_MS = 200
_BATCH = 500
_MAX_BACKOFF = 2.0
_LOG_EVERY = 1.0  # seconds between two log lines about the same ongoing trouble
_FINAL_FLUSH_S = 3.0

_REASONS: dict[int, DisconnectReason] = {
    CloseCode.MISSED_PONG: "missed_pong",
    CloseCode.DRAIN: "drain",
    CloseCode.REPLACED: "replaced",
    # After the handshake only a host deletion closes a tunnel with 4003.
    CloseCode.UNAUTHORIZED: "removed",
}


def disconnect_reason(close_code: int | None) -> DisconnectReason:
    """The reason a tunnel closed with ``close_code`` is reported under."""
    return _REASONS.get(close_code or CloseCode.NORMAL, "closed")


class EventEmitter:
    """A bounded outbox in front of the event log, flushed by a background task.

    Lifecycle: :meth:`start` once, :meth:`close` once. ``emit`` after close counts the
    event as dropped (and logs it): shutdown paths may still report a tunnel's end.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        capacity: int = 10_000,
        batch: int = _BATCH,
        stats: Stats = STATS,
        machine_id: str = "",
    ) -> None:
        self.log = log
        self._capacity = capacity
        self._batch = batch
        self._stats = stats
        self._outbox: deque[AnyEvent] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._state = "new"
        self._failing_since: float | None = None
        self._unlogged_drops = 0
        self._last_drop_log = 0.0
        self._logger = get_logger("events").bind(machine_id=machine_id)

    @property
    def pending(self) -> int:
        """Events not yet in the log (queued and in flight)."""
        return len(self._outbox) + self._inflight

    def start(self) -> None:
        """Start the flusher."""
        if self._state != "new":
            raise RuntimeError(f"the event emitter is {self._state}")
        self._state = "running"
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="events")

    def emit(self, event: AnyEvent) -> None:
        """Queue ``event`` for the log; returns at once."""
        if self._state == "closed":
            self._drop(1, "closed", kind=type(event).__name__)
            return
        self._outbox.append(event)
        self._stats.incr("relay_events_emitted_total")
        over = min(self.pending - self._capacity, len(self._outbox))
        if over > 0:
            for _ in range(over):
                self._outbox.popleft()
            self._drop(over, "overflow")
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the outbox to empty; True if it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self.pending == 0

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (up to ``timeout``), stop, count what is left as dropped."""
        if self._state == "closed":
            return
        if self._state == "running":
            await self.flush(timeout)
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = self.pending
        if left:
            self._outbox.clear()
            self._inflight = 0
            self._drop(left, "shutdown")
        self._flush_drop_log(force=True)

    async def _flush_loop(self) -> None:
        backoff = 0.05
        while True:
            self._flush_drop_log(force=False)  # drops held back by the rate limit
            if not self._outbox:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._outbox.popleft() for _ in range(min(self._batch, len(self._outbox)))]
            self._inflight = len(batch)
            try:
                await self.log.append_many(batch)
            except Exception as exc:  # noqa: BLE001 - the flusher must outlive any failure
                # Keep them, in order, in front of anything emitted meanwhile.
                self._outbox.extendleft(reversed(batch))
                self._inflight = 0
                self._flush_failed(exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            self._inflight = 0
            backoff = 0.05
            if self._failing_since is not None:
                self._logger.info(
                    "events.outbox_recovered",
                    outage_s=round(time.monotonic() - self._failing_since, 3),
                    pending=self.pending,
                )
                self._failing_since = None
                self._flush_drop_log(force=True)

    def _flush_failed(self, exc: Exception, backoff: float) -> None:
        self._stats.incr("relay_events_flush_errors_total")
        now = time.monotonic()
        if not isinstance(exc, DirectoryError):
            # Not an outage: a bug. Say so loudly, with the traceback, every time.
            self._logger.error("events.outbox_flush_crashed", exc_info=exc, pending=self.pending)
        if self._failing_since is None:
            self._failing_since = now
            self._logger.warning("events.outbox_flush_failed", error=str(exc), pending=self.pending)
        elif backoff >= _MAX_BACKOFF:
            self._logger.debug("events.outbox_still_failing", error=str(exc), pending=self.pending)
        # Capacity also holds while the batch is back in the queue.
        over = self.pending - self._capacity
        if over > 0:
            for _ in range(over):
                self._outbox.popleft()
            self._drop(over, "overflow")

    def _drop(self, count: int, why: str, **extra: str) -> None:
        self._stats.incr("relay_events_dropped_total", count, reason=why)
        self._unlogged_drops += count
        if why != "overflow":
            self._flush_drop_log(force=True, why=why, **extra)
        else:
            self._flush_drop_log(force=False, why=why)

    def _flush_drop_log(self, *, force: bool, why: str = "overflow", **extra: str) -> None:
        """Log drops at most once a second while they go on (each one is counted)."""
        now = time.monotonic()
        if not self._unlogged_drops or (not force and now - self._last_drop_log < _LOG_EVERY):
            return
        self._logger.error(
            "events.dropped",
            dropped=self._unlogged_drops,
            reason=why,
            capacity=self._capacity,
            **extra,
        )
        self._unlogged_drops = 0
        self._last_drop_log = now


class EventServices:
    """Everything ``relay serve`` runs for events: emitter, presence consumer, reconciler."""

    def __init__(self, cfg: ServeConfig, redis: StoreClient, keys: Keys) -> None:
        self._cfg = cfg
        self.log = RedisEventLog(redis, keys, maxlen=cfg.events_maxlen)
        self.presence = PresenceStore(redis, keys)
        self.emitter = EventEmitter(self.log, capacity=cfg.events_outbox, machine_id=cfg.machine_id)
        self.consumer = StreamConsumer(
            redis,
            keys,
            PRESENCE_GROUP,
            cfg.machine_id,
            batch_handler=self.presence.apply,
            block_ms=PRESENCE_BLOCK_MS,
            claim_idle=cfg.events_claim_idle,
        )
        self.reconciler = PresenceReconciler(
            redis=redis,
            keys=keys,
            ownership=OwnershipStore(redis, keys),
            presence=self.presence,
            events=self.log,
            machine_id=cfg.machine_id,
            interval=cfg.reconcile_interval,
        )

    def start(self) -> None:
        """Start the loops and announce this machine."""
        cfg = self._cfg
        self.emitter.start()
        self.consumer.start()
        self.reconciler.start()
        address = cfg.advertise or "http://{}:{}".format(*cfg.host_port)
        self.emitter.emit(MachineStarted(machine_id=cfg.machine_id, address=address))

    def draining(self) -> None:
        """Announce that this machine drains."""
        self.emitter.emit(MachineDraining(machine_id=self._cfg.machine_id))

    async def close(self) -> None:
        """Announce the stop, stop the loops, flush the outbox (a few seconds at most)."""
        self.emitter.emit(MachineStopped(machine_id=self._cfg.machine_id))
        await self.reconciler.close()
        await self.consumer.close()
        # The platform's kill timeout covers the drain window plus a little: a store that
        # is down now gets a short final chance, and what stays unsent is counted.
        await self.emitter.close(timeout=min(_FINAL_FLUSH_S, self._cfg.drain_timeout))


def tunnel_connected(events: EventEmitter, machine_id: str, tunnel: Tunnel) -> None:
    """Report a tunnel that has just been welcomed."""
    events.emit(
        Connected(
            host_id=tunnel.host.id,
            machine_id=machine_id,
            epoch=tunnel.epoch,
            remote_addr=tunnel.remote_addr,
            agent_version=tunnel.agent_version,
        )
    )


def tunnel_disconnected(
    events: EventEmitter, machine_id: str, tunnel: Tunnel, close_code: int | None
) -> None:
    """Report the end of a tunnel reported by :func:`tunnel_connected`."""
    events.emit(
        Disconnected(
            host_id=tunnel.host.id,
            machine_id=machine_id,
            epoch=tunnel.epoch,
            reason=disconnect_reason(close_code),
        )
    )


def register_event_metrics(
    meter: Meter,
    emitter: EventEmitter | None = None,
    consumers: Sequence[StreamConsumer] = (),
    stats: Stats = STATS,
) -> None:
    """Export the directory's counters (the outbox size, the consumers' lag) through ``meter``."""

    def observe(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, labels) for labels, value in stats.series(name)]

        return callback

    for name, description in METRIC_DESCRIPTIONS.items():
        meter.create_observable_counter(name, callbacks=[observe(name)], description=description)
    if emitter is not None:
        meter.create_observable_gauge(
            "relay_events_outbox",
            callbacks=[lambda _options: [Observation(emitter.pending)]],
            description="Events waiting in this relay's outbox for the log",
        )
    if consumers:
        meter.create_observable_gauge(
            "relay_events_consumer_lag_seconds",
            callbacks=[
                lambda _options: [
                    Observation(c.lag_seconds(), {"group": c.group}) for c in consumers
                ]
            ],
            description="Age of the oldest event log entry this machine's consumer is handling",
        )
