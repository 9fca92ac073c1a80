"""Idle tunnels on one relay: how many it holds, memory per tunnel, store traffic, latency.

One `relay serve` (a real Valkey behind a counting proxy, loadtest/redis_meter.py) and a
few agent processes holding the tunnels. Measures, side by side in one run:

* relay RSS before the agents connect and after, per tunnel;
* store traffic per refresh cycle (one ping interval), at 0 tunnels and at N tunnels:
  round trips and commands the relay sent (seen by the proxy), EVALSHA calls, and what
  ran inside the server (INFO commandstats);
* latency of requests to a few hosts while all the tunnels are held, with the garbage
  collector pauses of the relay and agents meanwhile (loadtest/gcprobe);
* the objects the relay's collector tracks per tunnel, and how many of them are frozen;
* the floor: a bare aiohttp WebSocket server holding as many idle sockets
  (loadtest/ws_floor.py), so the relay's own share of the memory per tunnel shows.

    python -m loadtest.idle [--tunnels 5000] [--processes 4] [--ping-interval 2] [--cycles 15]

The default window of 15 cycles of 2 s spans one pass of the relay's 30 s reconciler.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import json
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis_async

from loadtest.common import (
    agents_argv,
    cpu_seconds,
    create_hosts,
    enable_gc_probe,
    fixed_rate,
    fleet,
    free_port,
    gc_pauses,
    listen_drops,
    owner_machines,
    pct,
    profile,
    quiet_logs,
    raise_nofile,
    relay_argv,
    rss_kib,
    run,
    upstream_argv,
    wait_owned,
    wait_ready,
    write_tokens,
)
from loadtest.redis_meter import Counts, RedisMeter

MACHINE = "m0"
BATCH = 500  # hosts per refresh script (directory.ownership.BATCH_SIZE)
RELAY_FDS = 200  # a relay's descriptors besides its tunnels: store pool, listener, logs
REFRESH = "EVALSHA refresh"
_SCRIPT_MODULES = (
    "directory.ownership",
    "directory.hosts",
    "directory.presence",
    "directory.events",
    "directory.reconciler",
)


def script_names() -> dict[str, str]:
    """``EVALSHA <sha prefix>`` -> ``EVALSHA <script name>`` for the directory's scripts."""
    from directory._scripts import LuaScript

    names = {}
    for module in map(importlib.import_module, _SCRIPT_MODULES):
        for value in vars(module).values():
            if isinstance(value, LuaScript):
                names[f"EVALSHA {value.sha[:8]}"] = f"EVALSHA {value.name}"
    return names


def named(counter: collections.Counter[str], names: dict[str, str]) -> collections.Counter[str]:
    return collections.Counter({names.get(k, k): v for k, v in counter.items()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tunnels", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=4, help="agent processes")
    parser.add_argument("--ping-interval", type=float, default=2, help="relay's (s)")
    parser.add_argument("--cycles", type=int, default=15, help="ping intervals measured")
    parser.add_argument("--probe-hosts", type=int, default=5, help="hosts the requests go to")
    parser.add_argument("--rate", type=float, default=50, help="requests/s while idle")
    parser.add_argument("--seconds", type=float, default=10, help="of requests")
    parser.add_argument("--connect-timeout", type=float, default=300, help="(s)")
    parser.add_argument(
        "--ramp", type=int, default=400, help="agents connecting a second, in all (0: at once)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs' temp dir")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy relay and agents during the requests"
    )
    return parser.parse_args(argv)


@dataclass(frozen=True, slots=True)
class Window:
    """Store traffic over ``cycles`` ping intervals."""

    seen: Counts  # by the proxy: what the relay sent
    inside: collections.Counter[str]  # INFO commandstats calls (scripts' commands too)
    cycles: int

    def rate(self, counter: collections.Counter[str], *names: str) -> float:
        """Per cycle: the calls of ``names`` (all when none) in ``counter``."""
        return sum(counter[k] for k in names or tuple(counter)) / self.cycles


@dataclass
class Figures:
    connect_s: float = 0.0
    connect_drops: int = 0
    rss: tuple[int, int] = (0, 0)  # relay KiB before, after
    store_bytes: tuple[int, int] = (0, 0)  # Valkey used_memory before, after
    agents_rss: int = 0
    relay_cpu: float = 0.0  # share of one core while idle
    latencies: list[float] | None = None
    failures: list | None = None
    gc: dict[str, list[tuple[int, float]]] | None = None
    held: int = 0
    missed_pongs: int = 0
    connect_error: str = ""
    store_errors: int = 0  # relay log lines about the store being unavailable
    full_gcs: list[float] | None = None  # ms of every gen2 collection of the relay
    census: tuple[dict[str, int], dict[str, int]] = ({}, {})  # GC-tracked objects by type
    floor: tuple[int, int] = (0, 0)  # bare aiohttp WebSocket server RSS KiB: before, after


async def command_calls(client) -> collections.Counter[str]:
    info = await client.info("commandstats")
    return collections.Counter(
        {k.removeprefix("cmdstat_").upper(): int(v["calls"]) for k, v in info.items()}
    )


async def traffic_window(meter: RedisMeter, client, cycles: int, interval: float) -> Window:
    seen0, inside0 = meter.counts.copy(), await command_calls(client)
    await asyncio.sleep(cycles * interval)
    seen, inside = meter.counts.copy().minus(seen0), await command_calls(client)
    inside -= inside0
    inside.pop("INFO", None)  # ours
    names = script_names()
    seen = Counts(
        named(seen.commands, names), named(seen.round_trips, names), seen.largest_round_trip
    )
    return Window(seen, inside, cycles)


def split_tokens(tmp: Path, hosts: list, parts: int) -> list[Path]:
    size = -(-len(hosts) // parts)
    chunks = [hosts[i : i + size] for i in range(0, len(hosts), size)]
    return [write_tokens(tmp / f"tokens-{i}.txt", chunk) for i, chunk in enumerate(chunks)]


def check_limit(tunnels: int) -> None:
    limit = raise_nofile(tunnels + 10_000)
    if tunnels + RELAY_FDS > limit:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit} here and cannot be raised (no CAP_SYS_RESOURCE):"
            f" one relay cannot hold {tunnels} tunnels plus ~{RELAY_FDS} descriptors of its own"
        )


class IdleBench:
    """The processes of one run and the steps that measure them."""

    def __init__(self, args: argparse.Namespace, procs, redis_url: str) -> None:
        self.args = args
        self.procs = procs
        self.redis_url = redis_url
        self.prefix = "bench" + secrets.token_hex(3)
        self.port, self.up_port = free_port(), free_port()
        self.relay_url = f"http://127.0.0.1:{self.port}"
        self.gc_dir = enable_gc_probe(procs)
        self.client = redis_async.Redis.from_url(redis_url)
        self.meter = RedisMeter(redis_url)
        self.fig = Figures()
        self.relay = None
        self.agents: list = []
        self.hosts: list = []

    async def start(self) -> None:
        """Upstream and relay up, hosts registered."""
        args = self.args
        await self.meter.start()
        self.procs.spawn("upstream", upstream_argv(self.up_port))
        argv = relay_argv(MACHINE, self.port, self.meter.url, self.prefix, self.procs.tmp)
        self.relay = self.procs.spawn("relay", [*argv, "--ping-interval", str(args.ping_interval)])
        await wait_ready(f"http://127.0.0.1:{self.up_port}/")
        await wait_ready(self.relay_url + "/healthz")
        self.hosts = await create_hosts(self.redis_url, self.prefix, args.tunnels)
        await asyncio.sleep(args.ping_interval)

    async def connect(self) -> bool:
        """Start the agent processes and wait until every host is owned; False on timeout."""
        args = self.args
        drops0 = listen_drops()
        ramp = -(-args.ramp // args.processes) if args.ramp > 0 else 0
        extra = ("--log-level", "warning", "--ramp", str(ramp))
        up_url = f"http://127.0.0.1:{self.up_port}"
        self.agents = [
            self.procs.spawn(f"agents-{i}", agents_argv(self.relay_url, up_url, path, *extra))
            for i, path in enumerate(split_tokens(self.procs.tmp, self.hosts, args.processes))
        ]
        ids = [h.id for h in self.hosts]
        try:
            self.fig.connect_s = await wait_owned(
                self.client, self.prefix, ids, args.connect_timeout, MACHINE
            )
        except RuntimeError as exc:
            self.fig.connect_error = str(exc)
            return False
        finally:
            self.fig.connect_drops = listen_drops() - drops0
        return True

    async def census(self) -> dict[str, int]:
        """The relay's GC-tracked objects by type (gcprobe writes them on SIGUSR2)."""
        path = self.gc_dir / f"relay-{self.relay.pid}-census.json"
        path.unlink(missing_ok=True)
        self.relay.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return json.loads(path.read_text()) if path.exists() else {}

    async def memory(self) -> None:
        """Relay RSS (and the store's and agents' memory) now, after the connect."""
        fig, rss0, mem0 = self.fig, self.fig.rss[0], self.fig.store_bytes[0]
        fig.census = (fig.census[0], await self.census())
        fig.rss = (rss0, rss_kib(self.relay.pid))
        fig.store_bytes = (mem0, (await self.client.info("memory"))["used_memory"])
        fig.agents_rss = sum(rss_kib(a.pid) for a in self.agents)

    async def baseline(self) -> Window:
        self.fig.census = (await self.census(), {})
        self.fig.rss = (rss_kib(self.relay.pid), 0)
        self.fig.store_bytes = ((await self.client.info("memory"))["used_memory"], 0)
        return await traffic_window(
            self.meter, self.client, self.args.cycles, self.args.ping_interval
        )

    async def held(self) -> Window:
        """Store traffic and relay CPU while the tunnels are held idle."""
        cpu0, t0 = cpu_seconds(self.relay.pid), time.monotonic()
        window = await traffic_window(
            self.meter, self.client, self.args.cycles, self.args.ping_interval
        )
        self.fig.relay_cpu = (cpu_seconds(self.relay.pid) - cpu0) / (time.monotonic() - t0)
        return window

    async def requests(self) -> None:
        """Latency to a few hosts, with the GC pauses meanwhile (and py-spy if asked)."""
        args, fig = self.args, self.fig
        pids = {"relay": self.relay.pid} | {f"agents-{i}": a.pid for i, a in enumerate(self.agents)}
        spies = profile(pids, args.seconds, args.profile) if args.profile else []
        probes = [h.slug for h in self.hosts[:: max(1, len(self.hosts) // args.probe_hosts)]]
        since = time.time()
        fig.latencies, fig.failures = await fixed_rate(
            self.relay_url, probes[: args.probe_hosts], args.rate, args.seconds
        )
        fig.gc = {r: gc_pauses(self.gc_dir, r, since, time.time()) for r in ("relay", "agents")}
        for spy in spies:
            await asyncio.to_thread(spy.wait)

    async def floor(self) -> None:
        """RSS per socket of a bare aiohttp WebSocket server holding as many (ws_floor)."""
        port = free_port()
        server = self.procs.spawn(
            "floor-server",
            [sys.executable, "-m", "loadtest.ws_floor", "server", "--port", str(port)],
        )
        while True:
            try:
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        before = rss_kib(server.pid)
        url = f"ws://127.0.0.1:{port}/ws"
        argv = [sys.executable, "-m", "loadtest.ws_floor", "client", "--url", url]
        client = self.procs.spawn("floor-client", [*argv, "--sockets", str(self.args.tunnels)])
        deadline = time.monotonic() + self.args.connect_timeout
        while "connected" not in self.procs.log("floor-client"):
            if client.poll() is not None or time.monotonic() > deadline:
                return  # reported as not measured
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        self.fig.floor = (before, rss_kib(server.pid))
        for proc in (client, server):
            proc.kill()

    async def finish(self) -> None:
        """What is still held, what was lost, and where the relay's time went."""
        ids = [h.id for h in self.hosts]
        owners = await owner_machines(self.client, self.prefix, ids)
        self.fig.held = sum(o == MACHINE for o in owners)
        log = self.procs.log("relay")
        self.fig.missed_pongs = log.count('"tunnel.missed_pongs"')
        self.fig.store_errors = log.count("the store is unavailable")
        self.fig.full_gcs = [
            ms for gen, ms in gc_pauses(self.gc_dir, "relay", 0, time.time()) if gen == 2
        ]
        await self.client.aclose()
        await self.meter.close()


async def scenario(args: argparse.Namespace) -> tuple[Figures, Window | None, Window | None, int]:
    check_limit(args.tunnels)
    async with fleet("warning", keep=args.keep) as (procs, redis_url):
        bench = IdleBench(args, procs, redis_url)
        await bench.start()
        empty = await bench.baseline()
        full = None
        if await bench.connect():
            await asyncio.sleep(2 * args.ping_interval)
            await bench.memory()
            full = await bench.held()
            await bench.requests()
        await bench.finish()
        if full is not None:
            await bench.floor()
    return bench.fig, empty, full, len(bench.agents)


def report(args, fig: Figures, empty: Window, full: Window | None, processes: int) -> None:
    n = args.tunnels
    ramp = f"{args.ramp}/s" if args.ramp > 0 else "all at once"
    print(f"idle: {n} tunnels on one relay, held by {processes} agent processes (ramp {ramp});")
    print(f"      relay --ping-interval {args.ping_interval:g} s (agents: default 10 s)")
    if full is None:
        print(f"  connect      : FAILED: {fig.connect_error}")
        print(f"                 ({fig.connect_drops} SYNs dropped on full listen queues)")
    else:
        print(
            f"  connect      : {n} tunnels in {fig.connect_s:.1f} s"
            f" ({fig.connect_drops} SYNs dropped on full listen queues)"
        )
        report_memory(fig, n)
        report_store(args, empty, full)
        report_latency(args, fig)
    gcs = fig.full_gcs or [0.0]
    print(
        f"  at the end   : {fig.held}/{n} hosts owned by {MACHINE};"
        f" tunnels closed for missed pongs: {fig.missed_pongs};"
        f" 'store unavailable' log lines: {fig.store_errors}"
    )
    print(
        f"  relay gen2 GCs over the whole run: {len(fig.full_gcs or [])},"
        f" mean {sum(gcs) / len(gcs):.0f} ms, max {max(gcs):.0f} ms"
    )


def report_memory(fig: Figures, n: int) -> None:
    rss0, rss1 = fig.rss
    print(
        f"  relay RSS    : {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB after"
        f" -> {(rss1 - rss0) / n:.1f} KiB per tunnel (goal <= 17.5 KiB)"
    )
    mem0, mem1 = fig.store_bytes
    print(
        f"  elsewhere    : agents {fig.agents_rss / n:.1f} KiB RSS per tunnel;"
        f" store used_memory +{(mem1 - mem0) / n:.0f} B per tunnel"
    )
    floor0, floor1 = fig.floor
    if floor1:
        per = (floor1 - floor0) / n
        print(
            f"  aiohttp floor: a bare aiohttp WebSocket server (loadtest.ws_floor) holding {n}"
            f" idle sockets: {per:.1f} KiB each; the relay adds {(rss1 - rss0) / n - per:.1f}"
        )
    before, after = fig.census
    if before and after:
        grown = collections.Counter(after)
        grown.subtract(before)
        frozen = grown.pop("(frozen)", 0)
        top = ", ".join(f"{k} {v / n:.1f}" for k, v in grown.most_common(8))
        print(
            f"  GC-tracked   : {(grown.total() + frozen) / n:.1f} objects per tunnel in the relay,"
            f" {frozen / n:.1f} of them frozen; a full collection walks the other"
            f" {grown.total() / n:.1f}; most: {top}"
        )
    print(f"  relay CPU    : {fig.relay_cpu * 100:.0f} % of one core while holding them idle")


def report_store(args, empty: Window, full: Window) -> None:
    n = args.tunnels
    seen = full.seen
    trips, scripts = seen.round_trips[REFRESH], seen.commands[REFRESH]
    if trips:
        # Window edges cut passes, not pipelines: scripts per round trip is exact.
        per_pass = -(-n // BATCH)
        per_trip = scripts / trips
        print(
            f"  ownership refresh: {scripts} refresh EVALSHA in {trips} round trips over"
            f" {full.cycles} cycles: {per_trip:.1f} per round trip, {per_pass} per pass"
            f" ({n} hosts / {BATCH})"
        )
        print(
            f"                     = 1 round trip per {n * per_trip / per_pass:.0f} tunnels"
            " (goal: at most 1 per 500)"
        )
    evalsha = {k: v for k, v in seen.commands.items() if k.startswith("EVALSHA")}
    print(
        f"  EVALSHA calls per cycle: {sum(evalsha.values()) / full.cycles:.1f} ("
        + ", ".join(f"{k[8:]} {v / full.cycles:.1f}" for k, v in sorted(evalsha.items()))
        + ")"
    )
    print(
        f"  store traffic per cycle ({args.ping_interval:g} s; mean of {args.cycles}),"
        f" at 0 tunnels -> at {n}:"
    )
    rt0, rt1 = empty.rate(empty.seen.round_trips), full.rate(seen.round_trips)
    print(f"    round trips  : {rt0:.1f} -> {rt1:.1f}")
    kinds = sorted(set(empty.seen.round_trips) | set(seen.round_trips))
    by_kind = ", ".join(
        f"{k} {empty.rate(empty.seen.round_trips, k):.1f}->{full.rate(seen.round_trips, k):.1f}"
        for k in kinds
    )
    print(f"      named by their first command: {by_kind}")
    c0, c1 = empty.rate(empty.seen.commands), full.rate(seen.commands)
    print(
        f"    commands     : {c0:.1f} -> {c1:.1f} sent by the relay;"
        f" largest pipeline {seen.largest_round_trip}"
    )
    inside = ", ".join(
        f"{k} {full.rate(full.inside, k):.0f}" for k, _ in full.inside.most_common(6)
    )
    print(f"    in the server: {full.rate(full.inside):.0f} calls ({inside})")


def report_latency(args, fig: Figures) -> None:
    latencies, failures = fig.latencies or [], fig.failures or []
    total = len(latencies) + len(failures)
    if not latencies:
        print(f"  latency     : no request answered 200: {collections.Counter(failures)}")
        return
    failed = f"{len(failures)} {dict(collections.Counter(failures))}" if failures else "0"
    print(
        f"  latency      : {total} GETs at {args.rate:g}/s to {args.probe_hosts} hosts:"
        f" p50 {pct(latencies, 0.5):.1f} ms, p95 {pct(latencies, 0.95):.1f} ms"
        " (goal < 50 ms),"
    )
    print(
        f"                 p99 {pct(latencies, 0.99):.1f} ms, max {max(latencies) * 1000:.1f} ms;"
        f" failed {failed}"
    )
    for role, pauses in (fig.gc or {}).items():
        if pauses:
            by_gen = ", ".join(
                f"gen{g} {sum(1 for p in pauses if p[0] == g)} (max {max(p[1] for p in pauses if p[0] == g):.0f} ms)"
                for g in sorted({p[0] for p in pauses})
            )
            print(
                f"    GC pauses >= 10 ms meanwhile, {role}: {len(pauses)}, total"
                f" {sum(p[1] for p in pauses):.0f} ms: {by_gen}"
            )


def figures(args, fig: Figures, full: Window | None) -> dict:
    """The headline figures of a run, as plain data."""
    n = args.tunnels
    rss0, rss1 = fig.rss
    floor0, floor1 = fig.floor
    latencies = fig.latencies or []
    connected = full is not None
    return {
        "tunnels": n,
        "connected": connected,
        "connect_error": fig.connect_error,
        "connect_s": fig.connect_s,
        "relay_rss_before_mib": rss0 / 1024,
        "relay_rss_after_mib": rss1 / 1024,
        "kib_per_tunnel": (rss1 - rss0) / n if connected else None,
        "floor_kib_per_socket": (floor1 - floor0) / n if floor1 else None,
        "agents_kib_per_tunnel": fig.agents_rss / n if connected else None,
        "store_bytes_per_tunnel": (fig.store_bytes[1] - fig.store_bytes[0]) / n
        if connected
        else None,
        "relay_cpu_idle": fig.relay_cpu,
        "latency_p50_ms": pct(latencies, 0.5) if latencies else None,
        "latency_p99_ms": pct(latencies, 0.99) if latencies else None,
        "latency_failed": len(fig.failures or []),
        "held": fig.held,
        "missed_pongs": fig.missed_pongs,
    }


def measure(**overrides) -> dict:
    """Run the scenario (printing its report) with the defaults but ``overrides``."""
    args = parse_args([])
    for name, value in overrides.items():
        if not hasattr(args, name):
            raise TypeError(f"idle has no option {name!r}")
        setattr(args, name, value)
    quiet_logs()
    fig, empty, full, processes = run(scenario(args))
    report(args, fig, empty, full, processes)
    return figures(args, fig, full)


def main() -> None:
    quiet_logs()
    args = parse_args()
    report(args, *run(scenario(args)))


if __name__ == "__main__":
    main()
