"""100 MB download and upload through the tunnel vs direct: throughput and peak RSS.

One stack (upstream + relay + agent); the same client streams each transfer direct to the
upstream, then through the relay: GET /download?size=N (read chunk by chunk) and POST
/upload with a Content-Length body produced 64 KiB at a time (the upstream reads and
discards it). Prints MB/s (10^6 B/s) of each and the relayed/direct ratio, and the peak
RSS growth of the relay and of the agent during each relayed transfer: VmHWM after the
transfer minus VmRSS before it, VmHWM having been reset through /proc/<pid>/clear_refs
(or, where that is not allowed, VmRSS sampled every 10 ms; the report says which).
For reference, each transfer also runs through two C byte forwarders
(loadtest.byte_forwarders).

python -m loadtest.download [--mb 100] [--only download,upload]
"""

from __future__ import annotations

import argparse
import time

import aiohttp

from loadtest import byte_forwarders
from loadtest.common import CpuBudget, PeakRss, budget_line, run, stack
from loadtest.upstream import CHUNK

KINDS = ("download", "upload")
TIMEOUT = aiohttp.ClientTimeout(total=600)


async def download(base_url: str, size: int, host: str | None) -> float:
    """GET ``size`` bytes, reading them as they come; seconds taken."""
    headers = {"Host": host} if host else {}
    got = 0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        t0 = time.perf_counter()
        async with s.get(base_url + "/download", params={"size": str(size)}, headers=headers) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_any():
                got += len(chunk)
        elapsed = time.perf_counter() - t0
    assert got == size, (got, size)
    return elapsed


async def _body(size: int):
    sent = 0
    while sent < size:
        piece = CHUNK if size - sent >= len(CHUNK) else CHUNK[: size - sent]
        sent += len(piece)
        yield piece


async def upload(base_url: str, size: int, host: str | None) -> float:
    """POST ``size`` bytes (Content-Length, streamed 64 KiB at a time); seconds taken."""
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    if host:
        headers["Host"] = host
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        t0 = time.perf_counter()
        async with s.post(base_url + "/upload", data=_body(size), headers=headers) as r:
            text = await r.text()
            assert r.status == 200, (r.status, text[:200])
        elapsed = time.perf_counter() - t0
    assert int(text) == size, (text, size)
    return elapsed


TRANSFERS = {"download": download, "upload": upload}


def measure(mb: int = 100, only: tuple[str, ...] = KINDS, verbose: bool = True) -> dict:
    """Figures of each transfer in ``only``: ``{kind: {direct_mbps, relayed_mbps, ratio,
    relay_peak_growth_mib, agent_peak_growth_mib}, "mb": mb, "rss_source": ...}``."""
    size = mb * 1024 * 1024
    figures: dict = {"mb": mb}
    with stack() as s:
        forwarded = byte_forwarders.start(s, s.up_port) if byte_forwarders.available() else None
        for kind in only:
            transfer = TRANSFERS[kind]
            run(transfer(s.relay_url, 1 << 20, s.host_header))  # warm-up: pool, code paths
            direct = run(transfer(s.direct_url, size, None))
            pids = {"relay": s.relay.pid, "agent": s.agent.pid, "upstream": s.upstream.pid}
            with (
                CpuBudget(pids, client="self") as budget,
                PeakRss({"relay": s.relay.pid, "agent": s.agent.pid}) as peak,
            ):
                relayed = run(transfer(s.relay_url, size, s.host_header))
            reference = run(transfer(forwarded, size, None)) if forwarded else None
            mb_moved = size / 1e6
            cpu_ms = budget.per_unit(mb_moved, 1e3)
            growth = peak.growth_kib
            figures["rss_source"] = peak.source
            figures[kind] = {
                "direct_mbps": size / direct / 1e6,
                "relayed_mbps": size / relayed / 1e6,
                "ratio": direct / relayed,
                "relay_rss_before_mib": peak.base["relay"] / 1024,
                "agent_rss_before_mib": peak.base["agent"] / 1024,
                "relay_peak_growth_mib": growth["relay"] / 1024,
                "agent_peak_growth_mib": growth["agent"] / 1024,
                # CPU per MB is steadier than MB/s on a shared 2-core machine: it says
                # whether a change costs work or only waits.
                "relay_cpu_ms_per_mb": cpu_ms["relay"],
                "agent_cpu_ms_per_mb": cpu_ms["agent"],
                "relay_cpu_share": budget.seconds["relay"] / relayed,
                "agent_cpu_share": budget.seconds["agent"] / relayed,
                "cpu_ms_per_mb": cpu_ms,  # every process's, this one as "client"
                "cores_busy": budget.cores_busy,
                "ceiling": budget.ceiling(mb_moved),  # MB/s
                # Through two C byte forwarders (None without HAProxy).
                "reference_mbps": size / reference / 1e6 if reference else None,
                "reference_ratio": direct / reference if reference else None,
            }
    if verbose:
        report(figures, only)
    return figures


def report(figures: dict, only: tuple[str, ...]) -> None:
    print(f"{figures['mb']} MB transfers, one client, streamed both ways")
    for kind in only:
        f = figures[kind]
        print(f"  {kind}")
        print(f"    direct : {f['direct_mbps']:8.1f} MB/s")
        print(f"    relayed: {f['relayed_mbps']:8.1f} MB/s   ratio {f['ratio']:.2f} (goal >= 0.5)")
        print(
            f"    CPU per MB relayed: relay {f['relay_cpu_ms_per_mb']:.2f} ms"
            f" (busy {f['relay_cpu_share']:.0%}), agent {f['agent_cpu_ms_per_mb']:.2f} ms"
            f" (busy {f['agent_cpu_share']:.0%})"
        )
        cpu = f["cpu_ms_per_mb"]
        print("    " + budget_line(cpu, "ms per MB", "MB/s", f, f["direct_mbps"]))
        if f["reference_ratio"]:
            print(
                f"    reference: {f['reference_mbps']:8.1f} MB/s through {byte_forwarders.WHAT},"
                f" ratio {f['reference_ratio']:.2f}"
            )
        print(
            f"    peak RSS growth during the relayed {kind} ({figures['rss_source']}):"
            f" relay +{f['relay_peak_growth_mib']:.1f} MiB"
            f" (from {f['relay_rss_before_mib']:.1f}),"
            f" agent +{f['agent_peak_growth_mib']:.1f} MiB"
            f" (from {f['agent_rss_before_mib']:.1f}) (goal < 20 MiB each)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--only", default=",".join(KINDS), help="download,upload")
    args = parser.parse_args()
    only = tuple(k for k in args.only.split(",") if k)
    unknown = set(only) - set(KINDS)
    if unknown:
        parser.error(f"unknown transfer(s): {', '.join(sorted(unknown))}")
    measure(args.mb, only)


if __name__ == "__main__":
    main()
