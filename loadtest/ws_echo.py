"""WebSocket echo: 1 KiB messages, 64 in flight, direct vs through the tunnel.

One stack; the same client (aiohttp on uvloop, in this process) opens a WebSocket to the
upstream's GET /ws echo, direct and then through relay + agent, and keeps a window of
``--window`` binary messages of ``--size`` bytes outstanding: it sends ``window`` at once,
then one more for each echo it receives, for ``--seconds`` (or ``--max-messages``), then
waits for the outstanding ones. Prints echoed messages/s of each and the ratio.

Direct and relayed take turns, ``--rounds`` times: this machine's speed drifts by tens of
percent within a minute, so each relayed run is compared with the direct run just before
it, and the ratio reported is the median of those. Each turn also runs through two C
byte forwarders (loadtest.byte_forwarders), for reference.

    python -m loadtest.ws_echo [--seconds 5] [--rounds 3] [--window 64] [--size 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import aiohttp

from loadtest import byte_forwarders
from loadtest.common import CpuBudget, budget_line, run, stack


async def echo(
    url: str, host: str | None, seconds: float, window: int, size: int, max_messages: int
) -> tuple[float, int]:
    """Echoed messages/s with ``window`` in flight, and how many came back."""
    headers = {"Host": host} if host else {}
    payload = os.urandom(size)
    timeout = aiohttp.ClientWSTimeout(ws_receive=30)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=headers, compress=0, max_msg_size=0, timeout=timeout) as ws,
    ):
        t0 = time.perf_counter()
        deadline = t0 + seconds
        sent = received = 0
        for _ in range(min(window, max_messages)):
            await ws.send_bytes(payload)
            sent += 1
        sending = True
        while received < sent:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY or len(msg.data) != size:
                raise RuntimeError(f"unexpected echo: {msg.type} {str(msg.data)[:100]}")
            received += 1
            if sending and (sent >= max_messages or time.perf_counter() >= deadline):
                sending = False
            if sending:
                await ws.send_bytes(payload)
                sent += 1
        elapsed = time.perf_counter() - t0
    return received / elapsed, received


def measure(
    seconds: float = 5,
    window: int = 64,
    size: int = 1024,
    max_messages: int = 5_000_000,
    rounds: int = 3,
    verbose: bool = True,
) -> dict:
    """Direct and relayed echo rates, their ratio, relay/agent CPU µs per relayed message."""
    direct: list[float] = []
    relayed: list[float] = []
    reference: list[float] = []
    direct_n = relayed_n = 0
    with stack() as s:
        pids = {"relay": s.relay.pid, "agent": s.agent.pid, "upstream": s.upstream.pid}
        budget = CpuBudget(pids, client="self")  # summed over the relayed turns
        direct_url = s.direct_url.replace("http", "ws", 1) + "/ws"
        relay_url = s.relay_url.replace("http", "ws", 1) + "/ws"
        run(echo(relay_url, s.host_header, 1, window, size, max_messages))  # warm-up
        forwarded_url = None
        if byte_forwarders.available():
            forwarded = byte_forwarders.start(s, s.up_port)
            forwarded_url = forwarded.replace("http", "ws", 1) + "/ws"
        for _ in range(rounds):
            rate, n = run(echo(direct_url, None, seconds, window, size, max_messages))
            direct.append(rate)
            direct_n += n
            with budget:
                rate, n = run(echo(relay_url, s.host_header, seconds, window, size, max_messages))
            relayed.append(rate)
            relayed_n += n
            if forwarded_url:
                rate, _ = run(echo(forwarded_url, None, seconds, window, size, max_messages))
                reference.append(rate)
    ratios = [r / d for r, d in zip(relayed, direct, strict=True)]
    reference_ratios = [r / d for r, d in zip(reference, direct, strict=False)]
    cpu_us = budget.per_unit(relayed_n, 1e6)
    figures = {
        "seconds": seconds,
        "rounds": rounds,
        "window": window,
        "size": size,
        "direct_msgs_per_s": statistics.median(direct),
        "relayed_msgs_per_s": statistics.median(relayed),
        "direct_messages": direct_n,
        "relayed_messages": relayed_n,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "relay_cpu_us_per_message": cpu_us["relay"],
        "agent_cpu_us_per_message": cpu_us["agent"],
        "cpu_us_per_message": cpu_us,  # every process's, this one as "client"
        "cores_busy": budget.cores_busy,
        "ceiling": budget.ceiling(relayed_n),  # messages/s
        # Through two C byte forwarders, each turn (empty without HAProxy).
        "reference_ratios": reference_ratios,
        "reference_ratio": statistics.median(reference_ratios) if reference else None,
        "reference_msgs_per_s": statistics.median(reference) if reference else None,
    }
    if verbose:
        report(figures)
    return figures


def report(f: dict) -> None:
    print(
        f"WebSocket echo: {f['size']} B binary messages, {f['window']} in flight,"
        f" {f['rounds']} turns of {f['seconds']:g} s each; one client (this process)"
    )
    print(
        f"  direct : {f['direct_msgs_per_s']:9.0f} messages/s, median ({f['direct_messages']} echoed)"
    )
    print(
        f"  relayed: {f['relayed_msgs_per_s']:9.0f} messages/s, median ({f['relayed_messages']} echoed)"
    )
    turns = ", ".join(f"{r:.2f}" for r in f["ratios"])
    print(f"  ratio relayed/direct: {f['ratio']:.2f}, the median of {turns} (goal >= 0.5)")
    print(
        f"  per relayed message (both ways): relay {f['relay_cpu_us_per_message']:.1f} us CPU,"
        f" agent {f['agent_cpu_us_per_message']:.1f} us CPU"
    )
    direct = f["direct_msgs_per_s"]
    print("  " + budget_line(f["cpu_us_per_message"], "µs per message", "msg/s", f, direct))
    if f["reference_ratio"]:
        turns = ", ".join(f"{r:.2f}" for r in f["reference_ratios"])
        print(
            f"  reference: {f['reference_msgs_per_s']:9.0f} messages/s through"
            f" {byte_forwarders.WHAT}, ratio {f['reference_ratio']:.2f} (turns: {turns})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="of each run")
    parser.add_argument("--rounds", type=int, default=3, help="direct/relayed turns")
    parser.add_argument("--window", type=int, default=64, help="messages in flight")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message")
    parser.add_argument("--max-messages", type=int, default=5_000_000, help="per run")
    args = parser.parse_args()
    measure(args.seconds, args.window, args.size, args.max_messages, args.rounds)


if __name__ == "__main__":
    main()
