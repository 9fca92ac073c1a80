"""Every performance scenario in turn, then one table: goal, measured, threshold, holds.

Each scenario runs in its own child process (``python -m loadtest.bench --child NAME``),
one after the other (never two at once: the machine has few cores), bounded by a time
limit; its detailed report streams to stdout as it runs and its figures come back as
JSON. A scenario that fails shows up in the table as an error; the others still run.

    python -m loadtest.bench [--quick] [--only small_get,transfer,...] [--json FILE]

--quick shortens every scenario (a smoke run of a minute or two); the figures it gives
are noisier. Scenarios: see ``SCENARIOS`` (``--list``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest import byte_forwarders
from loadtest.common import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

NOISY = 0.05  # share of the machine kept busy by others above which a scenario is flagged

# --- what each scenario runs ----------------------------------------------------------------


def run_small_get(quick: bool) -> dict:
    from loadtest import small_get

    if quick:
        return small_get.measure(seconds=2, latency_seconds=4, rounds=2, turns=2)
    return small_get.measure(seconds=5, latency_seconds=10, rounds=2, turns=3)


def run_transfer(quick: bool) -> dict:
    from loadtest import download

    return download.measure(mb=100)  # a few seconds even in full; the goal is about 100 MB


def run_long_rtt(quick: bool) -> dict:
    from loadtest import long_rtt

    return long_rtt.measure(mb=50 if quick else 100, rounds=1 if quick else 3)


def run_ws_echo(quick: bool) -> dict:
    from loadtest import ws_echo

    return ws_echo.measure(seconds=2 if quick else 5, rounds=2 if quick else 3)


def run_fleet(quick: bool) -> dict:
    from loadtest import forward_hop

    return forward_hop.measure(seconds=3 if quick else 10)


def run_idle(quick: bool) -> dict:
    from loadtest import idle

    if quick:
        return idle.measure(tunnels=2000, cycles=2, seconds=3)
    return idle.measure(tunnels=2000, cycles=5, seconds=5)


def run_tiny_chunks(quick: bool) -> dict:
    from loadtest import tiny_chunks

    return tiny_chunks.measure(seconds=2 if quick else 3)


def run_events(quick: bool) -> dict:
    from loadtest import events_bench

    if quick:
        return events_bench.measure(events=20_000, burst=5_000)
    return events_bench.measure()


def run_drain(quick: bool) -> dict:
    from loadtest import drain

    if quick:
        return drain.measure(warmup=1, after=1)
    return drain.measure()


def run_failover(quick: bool) -> dict:
    from loadtest import failover

    if quick:
        return failover.measure(tunnels=200, timeout=30)
    return failover.measure()


def run_dns(quick: bool) -> dict:
    from loadtest import dns_bench

    if not dns_bench.available():
        return {"skipped": "pdns_server is not installed (scripts/ensure-test-deps.sh)"}
    if quick:
        return dns_bench.measure(hosts=1000, reconnects=200)
    return dns_bench.measure()


# --- how its figures read against the goals ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    goal: str
    measured: str
    threshold: str
    holds: str  # "yes", "NO", "-" (reported only), "error"


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def ceiling_row(what: str, f: dict, direct: float, rate: str) -> Row:
    """The best ``what`` ratio the cores allow at the CPU every process spent (reported)."""
    return Row(
        f"{what}: ceiling at the measured CPU of all 4 processes",
        f"{f['ceiling'] / direct:.2f} ({f['ceiling']:.0f} {rate}); cores"
        f" {f['cores_busy'] * 100:.0f}% busy",
        "reported",
        "-",
    )


def reference_row(
    what: str, ratio: float | None, rate: float | None, direct: float, unit: str
) -> Row:
    """The ``what`` ratio through two C byte forwarders in the same run (reported)."""
    figure = "HAProxy is not installed"
    if ratio is not None and rate is not None:
        figure = f"{ratio:.2f} ({rate:.0f} / {direct:.0f} {unit})"
    return Row(f"{what}: through {byte_forwarders.WHAT} instead", figure, "reference", "-")


def rows_small_get(f: dict) -> list[Row]:
    lat, rate = f["latency"], f["rate"]
    d, r = lat["direct"], lat["relayed"]
    failed = ""
    if f["latency_failed"]:
        kinds = {**d["failures"], **r["failures"]}
        failed = f"; {f['latency_failed']} failed: " + ", ".join(
            f"{k} x{v}" for k, v in kinds.items()
        )
    clean = f["latency_failed"] == 0
    return [
        Row(
            f"small GET relayed/direct req/s (wrk -t1 -c{f['connections']})",
            f"{f['ratio']:.2f} (median of {f['turns']} turns; {f['relayed_rps']:.0f}"
            f" / {f['direct_rps']:.0f})",
            ">= 0.5",
            verdict(f["ratio"] >= 0.5),
        ),
        ceiling_row("small GET", f, f["direct_rps"], "req/s"),
        reference_row(
            "small GET", f["reference_ratio"], f["reference_rps"], f["direct_rps"], "req/s"
        ),
        Row(
            "small GET relay CPU per request",
            f"{f['relay_cpu_us_per_request']:.1f} µs",
            "<= 90 µs",
            verdict(f["relay_cpu_us_per_request"] <= 90),
        ),
        Row(
            "small GET agent CPU per request",
            f"{f['agent_cpu_us_per_request']:.1f} µs",
            "<= 90 µs",
            verdict(f["agent_cpu_us_per_request"] <= 90),
        ),
        Row(
            f"added latency p50 at {rate:g} req/s (relayed - direct)",
            f"{f['added_p50_ms']:+.2f} ms ({r['p50_ms']:.2f} - {d['p50_ms']:.2f}){failed}",
            "<= 0.5 ms",
            verdict(clean and f["added_p50_ms"] <= 0.5),
        ),
        Row(
            f"added latency p99 at {rate:g} req/s (relayed - direct)",
            f"{f['added_p99_ms']:+.2f} ms ({r['p99_ms']:.2f} - {d['p99_ms']:.2f}){failed}",
            "<= 2 ms",
            verdict(clean and f["added_p99_ms"] <= 2),
        ),
    ]


def rows_transfer(f: dict) -> list[Row]:
    rows = []
    source = f.get("rss_source", "")
    for kind in ("download", "upload"):
        if kind not in f:
            continue
        x = f[kind]
        rows.append(
            Row(
                f"{f['mb']} MB {kind} relayed/direct throughput",
                f"{x['ratio']:.2f} (median of {f['rounds']} turns;"
                f" {x['relayed_mbps']:.0f} / {x['direct_mbps']:.0f} MB/s)",
                ">= 0.5",
                verdict(x["ratio"] >= 0.5),
            )
        )
        rows.append(ceiling_row(kind, x, x["direct_mbps"], "MB/s"))
        rows.append(
            reference_row(kind, x["reference_ratio"], x["reference_mbps"], x["direct_mbps"], "MB/s")
        )
        rows.append(
            Row(
                f"{kind}: relay / agent CPU per MB",
                f"{x['relay_cpu_ms_per_mb']:.2f} / {x['agent_cpu_ms_per_mb']:.2f} ms",
                "reported",
                "-",
            )
        )
        for role in ("relay", "agent"):
            growth = x[f"{role}_peak_growth_mib"]
            rows.append(
                Row(
                    f"{role} peak RSS growth during the {kind} ({source})",
                    f"{growth:.1f} MiB",
                    "< 20 MiB",
                    verdict(growth < 20),
                )
            )
    return rows


def rows_long_rtt(f: dict) -> list[Row]:
    rows = []
    for kind in ("download", "upload"):
        x = f[kind]
        rows.append(
            Row(
                f"{f['mb']} MB {kind} over a {f['rtt_ms']:g} ms round trip (agent-relay):"
                " growing windows vs a fixed 1 MiB one",
                f"{x['growing_mbps']:.0f} vs {x['fixed_mbps']:.0f} MB/s ({x['ratio']:.1f}x)",
                "reported",
                "-",
            )
        )
        growth = x["growth_mib"]
        rows.append(
            Row(
                "  peak RSS growth there, relay / agent",
                f"{growth['relay']:.1f} / {growth['agent']:.1f} MiB",
                "< 20 MiB",
                verdict(max(growth.values()) < 20),
            )
        )
    return rows


def rows_ws_echo(f: dict) -> list[Row]:
    return [
        Row(
            f"WS echo {f['size']} B x {f['window']} in flight relayed/direct msg/s",
            f"{f['ratio']:.2f} (median of {f['rounds']} turns; {f['relayed_msgs_per_s']:.0f}"
            f" / {f['direct_msgs_per_s']:.0f})",
            ">= 0.5",
            verdict(f["ratio"] >= 0.5),
        ),
        ceiling_row("WS echo", f, f["direct_msgs_per_s"], "msg/s"),
        reference_row(
            "WS echo",
            f["reference_ratio"],
            f["reference_msgs_per_s"],
            f["direct_msgs_per_s"],
            "msg/s",
        ),
    ]


def rows_fleet(f: dict) -> list[Row]:
    owner, hop, replay = f["m1"], f["m2"], f["m3"]
    return [
        Row(
            "misrouted GET answered with fly-replay: CPU per answer",
            f"{replay['m3_us']:.0f} µs ({replay['rps']:.0f} answers/s)",
            "reported",
            "-",
        ),
        Row(
            "GET forwarded between two relays: relay CPU per request (both)",
            f"{hop['m2_us'] + hop['m1_us']:.0f} µs (owner alone: {owner['m1_us']:.0f} µs)",
            "reported",
            "-",
        ),
    ]


def rows_idle(f: dict) -> list[Row]:
    goal = f"idle tunnel cost, relay RSS ({f['tunnels']} tunnels)"
    if not f["connected"]:
        return [Row(goal, f"not connected: {f['connect_error'][:60]}", "<= 17.5 KiB", "NO")]
    kib = f["kib_per_tunnel"]
    return [Row(goal, f"{kib:.1f} KiB/tunnel", "<= 17.5 KiB", verdict(kib <= 17.5))]


def rows_tiny_chunks(f: dict) -> list[Row]:
    turns = f["turns"]
    none = turns["none"]

    def row(name: str) -> Row:
        t = turns[name]
        return Row(
            f"{name} to one host: another host's GET p50/p99",
            f"{t['get_p50_ms']:.1f} / {t['get_p99_ms']:.1f} ms ({t['wire_mb_per_s']:.0f} MB/s,"
            f" relay {t['relay_cores']:.2f} cores; none: {none['get_p50_ms']:.1f} /"
            f" {none['get_p99_ms']:.1f})",
            "reported",
            "-",
        )

    return [row(name) for name in ("16 KiB chunks", "1-byte chunks", "1-byte WebSocket messages")]


def rows_events(f: dict) -> list[Row]:
    at_once, paced = f["burst_at_once"], f["burst_paced"]
    return [
        Row(
            f"event log append / projection ({f['events']} events)",
            f"{f['append_per_s']:,.0f} / {f['project_per_s']:,.0f} events/s",
            "reported",
            "-",
        ),
        Row(
            f"event burst of {f['burst']}: lag p99 at once / paced {f['rate']:,.0f}/s",
            f"{at_once['lag_p99_ms']:.0f} / {paced['lag_p99_ms']:.0f} ms",
            "reported",
            "-",
        ),
    ]


def rows_drain(f: dict) -> list[Row]:
    exit_text = "did not exit" if f["exit_status"] is None else f"exit {f['exit_status']}"
    return [
        Row(
            "drain under load: failed requests",
            f"{f['failed']} of {f['requests']} (drain {f['drain_s']:.1f} s, {exit_text})",
            "0",
            verdict(f["failed"] == 0),
        )
    ]


def rows_failover(f: dict) -> list[Row]:
    s99 = f["routable_99_s"]
    measured = "never" if s99 is None else f"{s99:.2f} s"
    sample = f"; GET {f['sample_ok']}/{f['sample']} ok"
    return [
        Row(
            f"failover: 99 % of {f['tunnels']} hosts routable after SIGKILL",
            measured + sample,
            "<= 5 s (failover.py)",
            verdict(s99 is not None and s99 <= 5 and f["sample_ok"] == f["sample"]),
        )
    ]


def rows_dns(f: dict) -> list[Row]:
    if "skipped" in f:
        return [Row("DNS (dns_bench)", "skipped: " + f["skipped"], "-", "-")]
    second, churn = f["second_sync"], f["reconnects_api"]
    return [
        Row(
            f"DNS second full sync of {f['hosts']} hosts: writes",
            f"{second['writes']} ({second['reads']} reads)",
            "0",
            verdict(second["writes"] == 0),
        ),
        Row(
            f"DNS {f['reconnects']} reconnects of live hosts: API calls",
            str(churn["calls"]),
            "0",
            verdict(churn["calls"] == 0),
        ),
    ]


@dataclass(frozen=True, slots=True)
class Scenario:
    run: Callable[[bool], dict]
    rows: Callable[[dict], list[Row]]
    limit: float  # seconds, full run (a quick run gets a third, at least 120 s)
    what: str


SCENARIOS: dict[str, Scenario] = {
    "small_get": Scenario(run_small_get, rows_small_get, 300, "small_get.py, open_loop.py"),
    "transfer": Scenario(run_transfer, rows_transfer, 600, "download.py (download, upload)"),
    "long_rtt": Scenario(run_long_rtt, rows_long_rtt, 300, "long_rtt.py (20 ms, windows)"),
    "ws_echo": Scenario(run_ws_echo, rows_ws_echo, 300, "ws_echo.py"),
    "fleet": Scenario(run_fleet, rows_fleet, 300, "forward_hop.py (replay, forward)"),
    "tiny_chunks": Scenario(run_tiny_chunks, rows_tiny_chunks, 120, "tiny_chunks.py"),
    "idle": Scenario(run_idle, rows_idle, 600, "idle.py --tunnels 2000"),
    "events": Scenario(run_events, rows_events, 600, "events_bench.py"),
    "drain": Scenario(run_drain, rows_drain, 300, "drain.py"),
    "failover": Scenario(run_failover, rows_failover, 600, "failover.py"),
    "dns": Scenario(run_dns, rows_dns, 900, "dns_bench.py (needs PowerDNS)"),
}


# --- running them -----------------------------------------------------------------------------


def child(name: str, quick: bool, out: Path) -> None:
    """Run one scenario in this process; its figures as JSON into ``out``."""
    from loadtest.common import quiet_logs

    quiet_logs()
    figures = SCENARIOS[name].run(quick)
    out.write_text(json.dumps(figures, default=str))


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    """CPU seconds of this process's waited-for descendants (the scenarios and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(name: str, quick: bool, tmp: Path) -> tuple[dict | None, str]:
    """One scenario in a child process, bounded in time: (figures, "") or (None, error)."""
    out = tmp / f"{name}.json"
    argv = [sys.executable, "-m", "loadtest.bench", "--child", name, "--out", str(out)]
    if quick:
        argv.append("--quick")
    limit = SCENARIOS[name].limit
    limit = max(120, limit / 3) if quick else limit
    proc = subprocess.Popen(argv, cwd=ROOT)
    try:
        status = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        # SIGINT first: the scenario's context managers stop its relays and agents.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return None, f"timed out after {limit:.0f} s"
    except BaseException:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=45)
        raise
    if status != 0 or not out.exists():
        return None, f"exit status {status} (its traceback is above)"
    return json.loads(out.read_text()), ""


def table(rows: list[Row]) -> str:
    head = Row("goal", "measured", "threshold", "holds")
    widths = [max(len(getattr(r, k)) for r in [head, *rows]) for k in Row.__slots__]
    lines = []
    for i, r in enumerate([head, *rows]):
        cells = [getattr(r, k).ljust(w) for k, w in zip(Row.__slots__, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.quick, args.out)
        return
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name:10} {scenario.what}")
        return
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")

    started, t0 = datetime.now(UTC), time.monotonic()
    rows: list[Row] = []
    results: dict[str, dict] = {}
    noisy: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-results-") as tmp:
        for name in names:
            print(f"\n=== {name} ({SCENARIOS[name].what}) ===", flush=True)
            t, busy0, ours0 = time.monotonic(), busy_seconds(), children_seconds()
            figures, error = run_child(name, args.quick, Path(tmp))
            seconds = time.monotonic() - t
            # Busy CPU on the machine that was not the scenario's own processes' (nor ours):
            # someone else's load, which skews the figures of a run on a shared machine.
            foreign = busy_seconds() - busy0 - (children_seconds() - ours0)
            foreign_share = max(0.0, foreign) / (seconds * (os.cpu_count() or 1))
            if foreign_share >= NOISY:
                noisy[name] = foreign_share
            print(
                f"--- {name}: {seconds:.0f} s; other processes kept"
                f" {foreign_share:.0%} of the machine busy meanwhile",
                flush=True,
            )
            if figures is None:
                rows.append(Row(f"{name}: did not complete", error, "-", "error"))
            else:
                rows += SCENARIOS[name].rows(figures)
            results[name] = {
                "seconds": seconds,
                "foreign_cpu_share": foreign_share,
                "error": error or None,
                "figures": figures,
            }
    took = time.monotonic() - t0

    mode = "quick" if args.quick else "full"
    print(
        f"\n=== performance goals ({mode} run, {took:.0f} s, {os.cpu_count()} CPUs,"
        " every scenario on this machine, one at a time) ==="
    )
    print(table(rows))
    held = sum(r.holds == "yes" for r in rows)
    checked = sum(r.holds in ("yes", "NO", "error") for r in rows)
    print(f"{held} of {checked} goals hold")
    if noisy:
        print(
            "note: other processes kept the machine busy during "
            + ", ".join(f"{name} ({share:.0%})" for name, share in noisy.items())
            + ": those figures are skewed"
        )
    if args.json:
        doc = {
            "started": started.isoformat(),
            "seconds": took,
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "rows": [asdict(r) for r in rows],
            "scenarios": results,
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"written to {args.json}")
    if any(r.holds == "error" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
