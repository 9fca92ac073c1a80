"""What a second relay process costs a request: owner-direct vs one forwarded hop.

Three relays on one Valkey: m1 and m2 in ``--route-mode forward``, m3 in fly-replay
mode; one host whose agent holds its tunnel on m1, one upstream. wrk -t1 -cN small GETs, first straight to the owner m1,
then to m2, which finds the owner in the directory and forwards over loopback (the path a
request takes when it reaches a process that does not hold the tunnel: another machine,
or another worker of the same machine under SO_REUSEPORT). Prints req/s and CPU µs per
request of each relay and the agent, and what N worker processes per VM would cost per
request: a connection lands on a worker at random, so (N-1)/N of requests take the hop.
Last, the same GETs to m3, which answers each with ``fly-replay`` (what a fleet on Fly
does with most requests): answers/s and m3's CPU per answer.

    python -m loadtest.forward_hop [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil

from loadtest.common import (
    BIN,
    cpu_seconds,
    create_hosts,
    fleet,
    free_port,
    relay_argv,
    run,
    upstream_argv,
    wait_owned,
    wait_ready,
)
from loadtest.small_get import wrk

PREFIX = "hop"


async def scenario(seconds: float, connections: int) -> dict:
    """Run both targets on one fleet; the figures."""
    async with fleet() as (procs, redis_url):
        up_port = free_port()
        procs.spawn("upstream", upstream_argv(up_port))
        ports = {"m1": free_port(), "m2": free_port(), "m3": free_port()}
        modes = {"m1": "forward", "m2": "forward", "m3": "fly-replay"}
        relays = {
            m: procs.spawn(
                m,
                relay_argv(m, port, redis_url, PREFIX, procs.tmp, "--route-mode", modes[m]),
            )
            for m, port in ports.items()
        }
        await wait_ready(f"http://127.0.0.1:{up_port}/")
        for port in ports.values():
            await wait_ready(f"http://127.0.0.1:{port}/healthz")
        (host,) = await create_hosts(redis_url, PREFIX, 1)
        agent = procs.spawn(
            "agent",
            [
                str(BIN / "relay"),
                "agent",
                "--server",
                f"http://127.0.0.1:{ports['m1']}",
                "--token",
                host.token,
                "--to",
                f"http://127.0.0.1:{up_port}",
            ],
        )
        from directory.store import connect  # noqa: PLC0415 - benchmark-only import

        client = await connect(redis_url)
        try:
            await wait_owned(client, PREFIX, [host.id], timeout=30, machine="m1")
        finally:
            await client.aclose()
        figures: dict = {"connections": connections, "seconds": seconds}
        for target in ("m1", "m2", "m3"):
            url = f"http://127.0.0.1:{ports[target]}/"
            header = f"{host.slug}.localhost"
            replays = target == "m3"
            await asyncio.to_thread(wrk, url, 2, connections, header, non_2xx_ok=replays)
            pids = {**{m: p.pid for m, p in relays.items()}, "agent": agent.pid}
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            rps, n = await asyncio.to_thread(
                wrk, url, seconds, connections, header, non_2xx_ok=replays
            )
            figures[target] = {
                "rps": rps,
                **{f"{k}_us": (cpu_seconds(p) - before[k]) / n * 1e6 for k, p in pids.items()},
            }
    return figures


def report(f: dict) -> None:
    direct, hop = f["m1"], f["m2"]
    print(f"forwarded hop, wrk -t1 -c{f['connections']} -d{f['seconds']:g}s, 2 cores")
    print(
        f"  to the owner (m1)   : {direct['rps']:8.0f} req/s; CPU per request m1"
        f" {direct['m1_us']:.0f} us, agent {direct['agent_us']:.0f} us"
    )
    print(
        f"  via m2, forwarded   : {hop['rps']:8.0f} req/s; CPU per request m2"
        f" {hop['m2_us']:.0f} us + m1 {hop['m1_us']:.0f} us, agent {hop['agent_us']:.0f} us"
    )
    replay = f["m3"]
    print(
        f"  misrouted to m3     : {replay['rps']:8.0f} fly-replay answers/s;"
        f" CPU per answer m3 {replay['m3_us']:.0f} us"
    )
    owner, extra = direct["m1_us"], hop["m2_us"] + hop["m1_us"] - direct["m1_us"]
    for n in (1, 2, 4):
        per = owner + (n - 1) / n * extra
        print(
            f"  {n} worker(s) per VM  : {per:6.0f} us of relay CPU per request"
            f" ({per / owner:.2f}x one process)"
        )


def measure(seconds: float = 10, connections: int = 32, verbose: bool = True) -> dict:
    """Run the scenario; its figures (see ``report``)."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install -y wrk (make bench does it)")
    figures = run(scenario(seconds, connections))
    if verbose:
        report(figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    measure(args.seconds, args.connections)


if __name__ == "__main__":
    main()
