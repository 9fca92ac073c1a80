"""100 MB download and upload through the tunnel vs direct: throughput and peak RSS.

One stack (upstream + relay + agent); the same client streams each transfer direct to the
upstream, then through the relay, taking turns (``--rounds``, medians reported): GET /download?size=N (read chunk by chunk) and POST
/upload with a Content-Length body produced 64 KiB at a time (the upstream reads and
discards it). Prints MB/s (10^6 B/s) of each and the relayed/direct ratio, and the peak
RSS growth of the relay and of the agent during the relayed transfers: VmHWM after the
transfer minus VmRSS before it, VmHWM having been reset through /proc/<pid>/clear_refs
(or, where that is not allowed, VmRSS sampled every 10 ms; the report says which).
For reference, each transfer also runs through two C byte forwarders
(loadtest.byte_forwarders).

python -m loadtest.download [--mb 100] [--rounds 5] [--only download,upload]
"""

from __future__ import annotations

import argparse
import statistics
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


def measure(
    mb: int = 100, only: tuple[str, ...] = KINDS, rounds: int = 5, verbose: bool = True
) -> dict:
    """Figures of each transfer in ``only``: ``{kind: {direct_mbps, relayed_mbps, ratio,
    relay_peak_growth_mib, agent_peak_growth_mib, ...}, "mb": mb, "rss_source": ...}``.

    Direct, relayed and (with HAProxy) the reference take turns ``rounds`` times: this
    machine's speed drifts by tens of percent within seconds, so each relayed transfer
    is compared with the direct one just before it; rates and ratios are medians.
    """
    size = mb * 1024 * 1024
    figures: dict = {"mb": mb, "rounds": rounds}
    with stack() as s:
        forwarded = byte_forwarders.start(s, s.up_port) if byte_forwarders.available() else None
        pids = {"relay": s.relay.pid, "agent": s.agent.pid, "upstream": s.upstream.pid}
        for kind in only:
            transfer = TRANSFERS[kind]
            run(transfer(s.relay_url, 1 << 20, s.host_header))  # warm-up: pool, code paths
            budget = CpuBudget(pids, client="self")  # summed over the relayed turns
            direct: list[float] = []
            relayed: list[float] = []
            reference: list[float] = []
            growth = {"relay": 0, "agent": 0}
            base: dict[str, int] = {}
            for _ in range(rounds):
                direct.append(run(transfer(s.direct_url, size, None)))
                with budget, PeakRss({"relay": s.relay.pid, "agent": s.agent.pid}) as peak:
                    relayed.append(run(transfer(s.relay_url, size, s.host_header)))
                # Growth from before the first turn: what one turn leaves behind counts.
                base = base or dict(peak.base)
                growth = {k: max(v, peak.peak[k] - base[k]) for k, v in growth.items()}
                figures["rss_source"] = peak.source
                if forwarded:
                    reference.append(run(transfer(forwarded, size, None)))
            mb_moved = size / 1e6 * rounds
            cpu_ms = budget.per_unit(mb_moved, 1e3)
            seconds = sum(relayed)
            ratios = [d / r for d, r in zip(direct, relayed, strict=True)]
            reference_ratios = [d / r for d, r in zip(direct, reference, strict=False)]
            figures[kind] = {
                "direct_mbps": statistics.median(size / t / 1e6 for t in direct),
                "relayed_mbps": statistics.median(size / t / 1e6 for t in relayed),
                "ratios": ratios,
                "ratio": statistics.median(ratios),
                "relay_rss_before_mib": base["relay"] / 1024,
                "agent_rss_before_mib": base["agent"] / 1024,
                "relay_peak_growth_mib": growth["relay"] / 1024,
                "agent_peak_growth_mib": growth["agent"] / 1024,
                # CPU per MB is steadier than MB/s on a shared 2-core machine: it says
                # whether a change costs work or only waits.
                "relay_cpu_ms_per_mb": cpu_ms["relay"],
                "agent_cpu_ms_per_mb": cpu_ms["agent"],
                "relay_cpu_share": budget.seconds["relay"] / seconds,
                "agent_cpu_share": budget.seconds["agent"] / seconds,
                "cpu_ms_per_mb": cpu_ms,  # every process's, this one as "client"
                "cores_busy": budget.cores_busy,
                "ceiling": budget.ceiling(mb_moved),  # MB/s
                # Through two C byte forwarders (None without HAProxy).
                "reference_ratios": reference_ratios,
                "reference_mbps": (
                    statistics.median(size / t / 1e6 for t in reference) if reference else None
                ),
                "reference_ratio": statistics.median(reference_ratios) if reference else None,
            }
    if verbose:
        report(figures, only)
    return figures


def report(figures: dict, only: tuple[str, ...]) -> None:
    print(
        f"{figures['mb']} MB transfers, one client, streamed both ways;"
        f" {figures['rounds']} turns, medians"
    )
    for kind in only:
        f = figures[kind]
        print(f"  {kind}")
        print(f"    direct : {f['direct_mbps']:8.1f} MB/s")
        turns = ", ".join(f"{r:.2f}" for r in f["ratios"])
        print(
            f"    relayed: {f['relayed_mbps']:8.1f} MB/s   ratio {f['ratio']:.2f} (goal >= 0.5),"
            f" the median of {turns}"
        )
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
            f"    peak RSS growth during the relayed {kind}s ({figures['rss_source']}):"
            f" relay +{f['relay_peak_growth_mib']:.1f} MiB"
            f" (from {f['relay_rss_before_mib']:.1f}),"
            f" agent +{f['agent_peak_growth_mib']:.1f} MiB"
            f" (from {f['agent_rss_before_mib']:.1f}) (goal < 20 MiB each)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="direct/relayed turns")
    parser.add_argument("--only", default=",".join(KINDS), help="download,upload")
    args = parser.parse_args()
    only = tuple(k for k in args.only.split(",") if k)
    unknown = set(only) - set(KINDS)
    if unknown:
        parser.error(f"unknown transfer(s): {', '.join(sorted(unknown))}")
    measure(args.mb, only, args.rounds)


if __name__ == "__main__":
    main()
