"""Small GET: direct to the upstream vs through relay + agent, side by side in one run.

Prints requests/s for each and their ratio, relay and agent CPU µs per request (process
CPU time over the run), p50/p99 latency at a fixed moderate rate, and the relay's RSS
before and after the relayed load (memory that sustained traffic leaves behind).

    python -m loadtest.small_get [--seconds 10] [--connections 32] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import time

import aiohttp

from loadtest.common import cpu_seconds, rss_kib, stack


def wrk(url: str, seconds: float, connections: int, host: str | None = None) -> tuple[float, int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses:\n{out}")
    return rps, total


async def fixed_rate(url: str, rate: float, seconds: float, host: str | None = None) -> list[float]:
    """Open-loop load: one request every 1/rate s, whatever the latency; returns latencies."""
    latencies: list[float] = []
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:

        async def one() -> None:
            t0 = time.perf_counter()
            async with s.get(url, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - t0)

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install -y wrk (make bench does it)")
    with stack() as s:
        wrk(s.relay_url + "/", 2, args.connections, s.host_header)  # warm-up
        direct_rps, _ = wrk(s.direct_url + "/", args.seconds, args.connections)
        relay_cpu0, agent_cpu0 = cpu_seconds(s.relay.pid), cpu_seconds(s.agent.pid)
        rss0 = rss_kib(s.relay.pid)
        relayed_rps, relayed_n = wrk(
            s.relay_url + "/", args.seconds, args.connections, s.host_header
        )
        rss1 = rss_kib(s.relay.pid)
        relay_us = (cpu_seconds(s.relay.pid) - relay_cpu0) / relayed_n * 1e6
        agent_us = (cpu_seconds(s.agent.pid) - agent_cpu0) / relayed_n * 1e6
        lat_direct = asyncio.run(fixed_rate(s.direct_url + "/", args.rate, 5))
        lat_relay = asyncio.run(fixed_rate(s.relay_url + "/", args.rate, 5, s.host_header))
    print(
        f"small GET, wrk -t1 -c{args.connections} -d{args.seconds:g}s;"
        " 2 cores shared by wrk, relay, agent, upstream"
    )
    print(f"  direct   : {direct_rps:9.0f} req/s")
    print(
        f"  relayed  : {relayed_rps:9.0f} req/s   ratio relayed/direct = {relayed_rps / direct_rps:.2f} (goal >= 0.5)"
    )
    print(f"  relay CPU: {relay_us:7.1f} us/request (goal <= 120)")
    print(
        f"  relay RSS: {rss0 / 1024:.1f} MiB before the relayed run,"
        f" {rss1 / 1024:.1f} MiB after its {relayed_n} requests"
    )
    print(f"  agent CPU: {agent_us:7.1f} us/request (goal <= 150)")
    print(
        f"  latency at {args.rate:g} req/s: direct p50 {pct(lat_direct, 0.5):.2f} ms p99 {pct(lat_direct, 0.99):.2f} ms;"
        f" relayed p50 {pct(lat_relay, 0.5):.2f} ms p99 {pct(lat_relay, 0.99):.2f} ms"
        f" (mean {statistics.mean(lat_relay) * 1000:.2f} ms)"
    )


if __name__ == "__main__":
    main()
