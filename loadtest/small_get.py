"""Small GET: direct to the upstream vs through relay + agent, side by side in one run.

Two parts on one stack (the same upstream process serves the direct and relayed load):

1. closed loop, wrk -t1 -c32, in turns (direct, relayed, then through two C byte
   forwarders for reference, loadtest.byte_forwarders): requests/s of each and the median
   of the turns' relayed/direct ratios; relay and agent CPU µs per proxied request
   (process CPU time over the relayed runs); the relay's RSS before and after the relayed
   load (memory that sustained traffic leaves behind).
2. open loop at a fixed rate (default 500 req/s): p50/p99 latency direct and relayed, and
   what the relay adds (relayed minus direct). The client is loadtest/open_loop.py in its
   own process; direct and relayed take turns (--rounds) in that one client.

    python -m loadtest.small_get [--seconds 5] [--turns 3] [--connections 32] [--rate 500]
        [--latency-seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys

from loadtest import byte_forwarders
from loadtest.common import ROOT, CpuBudget, budget_line, rss_kib, stack


def wrk(
    url: str,
    seconds: float,
    connections: int,
    host: str | None = None,
    *,
    non_2xx_ok: bool = False,
) -> tuple[float, int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors and not non_2xx_ok:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses:\n{out}")
    return rps, total


def open_loop(
    targets: list[list[str]], rate: float, seconds: float, rounds: int, warmup: float = 1
) -> dict:
    """Run loadtest/open_loop.py in its own process over ``targets``; its JSON figures."""
    argv = [sys.executable, "-m", "loadtest.open_loop", "--rate", str(rate)]
    argv += ["--seconds", str(seconds), "--rounds", str(rounds), "--warmup", str(warmup)]
    for target in targets:
        argv += ["--target", *target]
    timeout = (seconds + warmup * len(targets)) * 2 + 60
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )
    if out.returncode:
        raise RuntimeError(f"open_loop failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def measure(
    seconds: float = 5,
    connections: int = 32,
    rate: float = 500,
    latency_seconds: float = 10,
    rounds: int = 2,
    turns: int = 3,
    verbose: bool = True,
) -> dict:
    """Run both parts; the figures as a dict (see ``report`` for what each is).

    Part 1 takes ``turns`` turns of a direct run then a relayed run then one through the
    byte forwarders, ``seconds`` each: this machine's speed drifts by tens of percent
    within a minute, so each relayed run is compared with the direct run just before it
    and the ratio reported is the median of those, as in the other scenarios.
    """
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install -y wrk (make bench does it)")
    direct: list[float] = []
    relayed: list[float] = []
    reference: list[float] = []
    relayed_n = 0
    with stack() as s:
        wrk(s.relay_url + "/", 2, connections, s.host_header)  # warm-up
        forwarded = None
        if byte_forwarders.available():
            forwarded = byte_forwarders.start(s, s.up_port)
            wrk(forwarded + "/", 2, connections)  # warm-up
        rss0 = rss_kib(s.relay.pid)
        pids = {"relay": s.relay.pid, "agent": s.agent.pid, "upstream": s.upstream.pid}
        budget = CpuBudget(pids, client="children")  # the client: wrk; summed over turns
        if verbose:
            print(
                f"small GET, {turns} turns of wrk -t1 -c{connections} -d{seconds:g}s:", flush=True
            )
        for turn in range(1, turns + 1):
            direct.append(wrk(s.direct_url + "/", seconds, connections)[0])
            with budget, CpuBudget(pids, client="children") as this_turn:
                rps, n = wrk(s.relay_url + "/", seconds, connections, s.host_header)
            relayed.append(rps)
            relayed_n += n
            if forwarded:
                reference.append(wrk(forwarded + "/", seconds, connections)[0])
            if verbose:
                # As it goes: a run cut short (a time limit) still says something.
                cpu = this_turn.per_unit(n, 1e6)
                print(
                    f"  turn {turn}: direct {direct[-1]:.0f} req/s, relayed {rps:.0f} req/s"
                    f" ({rps / direct[-1]:.2f}); relay {cpu['relay']:.1f} us/request,"
                    f" agent {cpu['agent']:.1f} us/request",
                    flush=True,
                )
        rss1 = rss_kib(s.relay.pid)
        cpu_us = budget.per_unit(relayed_n, 1e6)
        latency = open_loop(
            [["direct", s.direct_url + "/"], ["relayed", s.relay_url + "/", s.host_header]],
            rate,
            latency_seconds,
            rounds,
        )
    ratios = [r / d for r, d in zip(relayed, direct, strict=True)]
    reference_ratios = [r / d for r, d in zip(reference, direct, strict=False)]
    open_direct, open_relayed = latency["direct"], latency["relayed"]
    direct_rps = statistics.median(direct)
    figures = {
        "seconds": seconds,
        "turns": turns,
        "connections": connections,
        "direct_rps": direct_rps,
        "relayed_rps": statistics.median(relayed),
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "relayed_requests": relayed_n,
        "relay_cpu_us_per_request": cpu_us["relay"],
        "agent_cpu_us_per_request": cpu_us["agent"],
        "cpu_us_per_request": cpu_us,  # every process's, wrk as "client"
        "cores_busy": budget.cores_busy,
        "ceiling": budget.ceiling(relayed_n),  # requests/s
        "ceiling_ratio": budget.ceiling(relayed_n) / direct_rps,
        # Through two C byte forwarders, each turn (empty without HAProxy).
        "reference_rps": statistics.median(reference) if reference else None,
        "reference_ratios": reference_ratios,
        "reference_ratio": statistics.median(reference_ratios) if reference else None,
        "relay_rss_before_mib": rss0 / 1024,
        "relay_rss_after_mib": rss1 / 1024,
        "rate": rate,
        "latency_seconds": latency_seconds,
        "latency": latency,
        "added_p50_ms": open_relayed["p50_ms"] - open_direct["p50_ms"],
        "added_p99_ms": open_relayed["p99_ms"] - open_direct["p99_ms"],
        "latency_failed": open_direct["failed"] + open_relayed["failed"],
    }
    if verbose:
        report(figures)
    return figures


def report(f: dict) -> None:
    print(
        f"small GET, wrk -t1 -c{f['connections']} -d{f['seconds']:g}s, {f['turns']} turns;"
        " 2 cores shared by wrk, relay, agent, upstream"
    )
    print(f"  direct   : {f['direct_rps']:9.0f} req/s, median")
    turns = ", ".join(f"{r:.2f}" for r in f["ratios"])
    print(
        f"  relayed  : {f['relayed_rps']:9.0f} req/s, median; ratio relayed/direct ="
        f" {f['ratio']:.2f}, the median of {turns} (goal >= 0.5)"
    )
    print(f"  relay CPU: {f['relay_cpu_us_per_request']:7.1f} us/request (goal <= 90)")
    print(
        f"  relay RSS: {f['relay_rss_before_mib']:.1f} MiB before the relayed run,"
        f" {f['relay_rss_after_mib']:.1f} MiB after its {f['relayed_requests']} requests"
    )
    print(f"  agent CPU: {f['agent_cpu_us_per_request']:7.1f} us/request (goal <= 90)")
    print(
        "  " + budget_line(f["cpu_us_per_request"], "µs per request", "req/s", f, f["direct_rps"])
    )
    if f["reference_rps"]:
        turns = ", ".join(f"{r:.2f}" for r in f["reference_ratios"])
        print(
            f"  reference: {f['reference_rps']:9.0f} req/s through {byte_forwarders.WHAT},"
            f" ratio {f['reference_ratio']:.2f} (turns: {turns})"
        )
    lat = f["latency"]
    print(
        f"  open loop at {f['rate']:g} req/s for {f['latency_seconds']:g} s each"
        " (loadtest.open_loop, its own process):"
    )
    for name in ("direct", "relayed"):
        x = lat[name]
        failed = f", failed {x['failed']} {x['failures']}" if x["failed"] else ""
        print(
            f"    {name:8}: p50 {x['p50_ms']:.2f} ms, p90 {x['p90_ms']:.2f} ms,"
            f" p99 {x['p99_ms']:.2f} ms, max {x['max_ms']:.2f} ms ({x['ok']} answered{failed};"
            f" sends late p99 {x['late_p99_ms']:.2f} ms,"
            f" client {x['client_cpu_us_per_request']:.0f} us CPU/request)"
        )
    print(
        f"    added by the relay: p50 {f['added_p50_ms']:+.2f} ms (goal <= 0.5),"
        f" p99 {f['added_p99_ms']:+.2f} ms (goal <= 2)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="of each wrk run")
    parser.add_argument("--turns", type=int, default=3, help="direct/relayed/reference turns")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500, help="open loop, requests/s")
    parser.add_argument("--latency-seconds", type=float, default=10, help="per target")
    parser.add_argument("--rounds", type=int, default=2, help="direct/relayed turns")
    args = parser.parse_args()
    measure(
        args.seconds, args.connections, args.rate, args.latency_seconds, args.rounds, args.turns
    )


if __name__ == "__main__":
    main()
