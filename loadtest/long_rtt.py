"""Transfers over a long round trip between agent and relay: growing stream windows
against a fixed one.

A stream's receive window caps its throughput at one window per round trip: 1 MiB over
20 ms is 52 MB/s at most, whatever the link. The relay and the agent grow a window
that sets the pace (``--max-window``, StreamState.grow); this scenario shows what that
buys. Two stacks run side by side, each with the agent's tunnel through a forwarder
that delays every byte (``loadtest.latency``): one with ``--max-window`` equal to
``--initial-window`` on both sides (no growth), one with the defaults. Their turns
alternate; medians are reported, with the relay's and the agent's peak RSS growth.

python -m loadtest.long_rtt [--rtt-ms 20] [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack

from loadtest.common import PeakRss, run, stack
from loadtest.download import TRANSFERS

KINDS = ("download", "upload")
_FIXED = ("--max-window", str(1 << 20))  # the default initial window: no growth


def measure(rtt_ms: float = 20.0, mb: int = 100, rounds: int = 3, verbose: bool = True) -> dict:
    """``{kind: {"fixed_mbps", "growing_mbps", "ratio", "growth_mib": {...}}, ...}``."""
    size = mb * 1024 * 1024
    delay = rtt_ms / 2000
    figures: dict = {"rtt_ms": rtt_ms, "mb": mb, "rounds": rounds}
    with ExitStack() as stacks:
        fixed = stacks.enter_context(stack(*_FIXED, agent_args=_FIXED, tunnel_delay=delay))
        growing = stacks.enter_context(stack(tunnel_delay=delay))
        for kind in KINDS:
            transfer = TRANSFERS[kind]
            rates: dict[str, list[float]] = {"fixed": [], "growing": []}
            growth = {"relay": 0.0, "agent": 0.0}
            for s in (fixed, growing):
                run(transfer(s.relay_url, 1 << 20, s.host_header))  # warm-up
            for _ in range(rounds):
                for name, s in (("fixed", fixed), ("growing", growing)):
                    pids = {"relay": s.relay.pid, "agent": s.agent.pid}
                    with PeakRss(pids) as peak:
                        seconds = run(transfer(s.relay_url, size, s.host_header))
                    rates[name].append(size / seconds / 1e6)
                    if name == "growing":
                        for who, most in growth.items():
                            grown = (peak.peak[who] - peak.base[who]) / 1024
                            growth[who] = max(most, grown)
            fixed_mbps = statistics.median(rates["fixed"])
            growing_mbps = statistics.median(rates["growing"])
            figures[kind] = {
                "fixed_mbps": fixed_mbps,
                "growing_mbps": growing_mbps,
                "ratio": growing_mbps / fixed_mbps,
                "fixed_turns": rates["fixed"],
                "growing_turns": rates["growing"],
                "growth_mib": growth,
            }
            if verbose:
                f = figures[kind]
                print(
                    f"{kind} of {mb} MB over a {rtt_ms:g} ms round trip:"
                    f" fixed 1 MiB window {fixed_mbps:.0f} MB/s,"
                    f" growing windows {growing_mbps:.0f} MB/s ({f['ratio']:.1f}x);"
                    f" peak RSS growth relay +{growth['relay']:.1f} MiB,"
                    f" agent +{growth['agent']:.1f} MiB",
                    flush=True,
                )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    measure(args.rtt_ms, args.mb, args.rounds)


if __name__ == "__main__":
    main()
