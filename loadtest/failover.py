"""Failover: SIGKILL the machine holding every tunnel; how fast are the hosts routable again?

Three `relay serve` machines share one real Valkey behind `relay edge`; one agent process
holds all tunnels and dials through the edge. Only m0 runs while the agents connect (the
edge skips machines that refuse connections), so every tunnel lands on m0; then m1 and
m2 start and m0 is SIGKILLed. The owner keys are polled with MGET every 50 ms: a host is
routable again once its owner key is present and names a machine other than m0. At the
end, real requests through the edge to a sample of hosts must answer 200.

    python -m loadtest.failover [--tunnels 1000] [--timeout 60] [--sample 50] [--keep]

Ping intervals are the defaults (relay 10 s, agent 10 s with a 30 s silence timeout): the
agents learn of the death from their WebSocket closing, not from a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import signal
import time
from pathlib import Path

import redis.asyncio as redis_async

from loadtest.common import (
    agents_argv,
    count_by,
    cpu_seconds,
    create_hosts,
    edge_argv,
    fleet,
    free_port,
    get_statuses,
    listen_drops,
    log_events,
    owner_machines,
    profile,
    quiet_logs,
    raise_nofile,
    relay_argv,
    run,
    upstream_argv,
    wait_owned,
    wait_ready,
    write_tokens,
)

MACHINES = ("m0", "m1", "m2")
DEAD = "m0"
POLL = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=60, help="give up after (s)")
    parser.add_argument("--sample", type=int, default=50, help="hosts checked over HTTP")
    parser.add_argument("--settle", type=float, default=2, help="wait before the kill (s)")
    parser.add_argument("--log-level", default="info", help="of relays and agents")
    parser.add_argument("--keep", action="store_true", help="keep the logs' temp dir")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the recovery into this dir"
    )
    return parser.parse_args(argv)


async def watch_recovery(client, prefix: str, ids: list[str], t0: float, timeout: float) -> list:
    """Seconds after ``t0`` at which each host first had a live owner other than DEAD."""
    first: list[float | None] = [None] * len(ids)
    pending = len(ids)
    tick = t0
    while pending and time.monotonic() - t0 < timeout:
        owners = await owner_machines(client, prefix, ids)
        now = time.monotonic() - t0
        for i, owner in enumerate(owners):
            if first[i] is None and owner is not None and owner != DEAD:
                first[i] = now
                pending -= 1
        tick += POLL
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    return first


def seconds_at(times: list[float | None], fraction: float) -> float | None:
    """Seconds until ``fraction`` of all hosts had recovered; None if not within the run."""
    done = sorted(t for t in times if t is not None)
    needed = max(1, math.ceil(fraction * len(times)))
    return done[needed - 1] if needed <= len(done) else None


def at_fraction(times: list[float | None], fraction: float) -> str:
    """When ``fraction`` of all hosts had recovered, or 'never' within the run."""
    seconds = seconds_at(times, fraction)
    return "  never" if seconds is None else f"{seconds:6.2f} s"


async def scenario(args: argparse.Namespace) -> dict:
    raise_nofile(4 * args.tunnels + 4096)
    ports = {m: free_port() for m in MACHINES}
    edge_port, up_port = free_port(), free_port()
    edge_url, up_url = f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{up_port}"
    prefix = "bench" + secrets.token_hex(3)
    async with fleet(args.log_level, keep=args.keep) as (procs, redis_url):
        client = redis_async.Redis.from_url(redis_url)

        def start_relay(machine: str):
            argv = relay_argv(machine, ports[machine], redis_url, prefix, procs.tmp)
            return procs.spawn(f"relay-{machine}", argv)

        procs.spawn("upstream", upstream_argv(up_port))
        relays = {DEAD: start_relay(DEAD)}
        edge = procs.spawn("edge", edge_argv(edge_port, ports))
        for url in (up_url + "/", f"http://127.0.0.1:{ports[DEAD]}/healthz", edge_url + "/healthz"):
            await wait_ready(url)
        hosts = await create_hosts(redis_url, prefix, args.tunnels)
        ids = [h.id for h in hosts]
        tokens = write_tokens(procs.tmp / "tokens.txt", hosts)
        agents = procs.spawn(
            "agents", agents_argv(edge_url, up_url, tokens, "--log-level", args.log_level)
        )
        connect_s = await wait_owned(client, prefix, ids, timeout=120, machine=DEAD)
        for machine in MACHINES[1:]:
            relays[machine] = start_relay(machine)
            await wait_ready(f"http://127.0.0.1:{ports[machine]}/healthz")
        await asyncio.sleep(args.settle)
        watched = {"agents": agents.pid, "edge": edge.pid} | {
            m: relays[m].pid for m in MACHINES[1:]
        }
        cpu0 = {name: cpu_seconds(pid) for name, pid in watched.items()}
        spies = profile(watched, 10, args.profile) if args.profile else []
        t0, killed_at, drops0 = time.monotonic(), time.time(), listen_drops()
        os.kill(relays[DEAD].pid, signal.SIGKILL)
        times = await watch_recovery(client, prefix, ids, t0, args.timeout)
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in watched.items()}
        drops = listen_drops() - drops0
        wall = time.monotonic() - t0
        where = count_by(await owner_machines(client, prefix, ids))
        sample = random.sample(hosts, min(args.sample, len(hosts)))
        checked = count_by(await get_statuses(edge_url, [h.slug for h in sample]))
        await client.aclose()
        for spy in spies:
            await asyncio.to_thread(spy.wait)
        timeline = agent_timeline(procs.log("agents"), killed_at)
    report(args, connect_s, times, where, cpu, wall, checked)
    print(timeline)
    print(f"  SYNs dropped on full listen queues meanwhile (TcpExt ListenDrops): {drops}")
    return {
        "tunnels": args.tunnels,
        "connect_s": connect_s,
        "routable_50_s": seconds_at(times, 0.5),
        "routable_99_s": seconds_at(times, 0.99),
        "routable_100_s": seconds_at(times, 1.0),
        "not_routable": sum(t is None for t in times),
        "owners_after": where,
        "sample_statuses": {str(k): v for k, v in checked.items()},
        "sample_ok": checked.get(200, 0),
        "sample": sum(checked.values()),
        "listen_drops": drops,
    }


def measure(**overrides) -> dict:
    """Run the scenario (printing its report) with the defaults but ``overrides``."""
    args = parse_args([])
    for name, value in overrides.items():
        if not hasattr(args, name):
            raise TypeError(f"failover has no option {name!r}")
        setattr(args, name, value)
    quiet_logs()
    return run(scenario(args))


def agent_timeline(text: str, killed_at: float) -> str:
    """When the agents saw their tunnels close, and reconnected, relative to the kill."""
    spans = []
    for label, event in (("closed", "agent.disconnected"), ("reconnected", "agent.connected")):
        times = sorted(t - killed_at for t in log_events(text, event) if t >= killed_at - 0.5)
        if times:
            spans.append(
                f"{label} {len(times)}: {times[0]:.2f}..{times[-1]:.2f} s"
                f" (median {times[len(times) // 2]:.2f} s)"
            )
    return "  agents (their log): " + ("; ".join(spans) or "no info lines (--log-level)")


def report(args, connect_s, times, where, cpu, wall, checked) -> None:
    n = args.tunnels
    print(
        f"failover: {n} tunnels on {DEAD} of {len(MACHINES)} machines behind relay edge,"
        " agents (one process) dial the edge; default ping intervals"
    )
    print(f"  connect   : {n} tunnels on {DEAD} in {connect_s:.1f} s")
    print(f"  SIGKILL {DEAD} -> routable again (owner key present, machine != {DEAD}):")
    print(f"    50 %    : {at_fraction(times, 0.5)}")
    print(f"    99 %    : {at_fraction(times, 0.99)}   (goal <= 5 s)")
    print(f"    100 %   : {at_fraction(times, 1.0)}")
    missing = sum(t is None for t in times)
    print(f"    not routable after {args.timeout:g} s: {missing}")
    print(f"  owners now: {where}")
    cpu_text = ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
    print(f"  CPU s over the {wall:.1f} s watched: {cpu_text}")
    print(f"  GET through the edge to {sum(checked.values())} sample hosts: {checked}")


def main() -> None:
    quiet_logs()
    run(scenario(parse_args()))


if __name__ == "__main__":
    main()
