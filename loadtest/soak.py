"""Soak: a long mixed run against one relay; does its memory stay flat, does anything fail?

One relay (with its embedded Valkey), one agent in front of the loadtest upstream, and
then, in turn (every count times ``--scale``):

    warm-up      a short dose of each phase below; the relay's RSS after it is the baseline
    gets         1,000,000 small GET / through the tunnel (wrk -t1 -c32, run in chunks of
                 at most 30 s until the count is reached; counted from wrk's summary)
    transfers    100 transfers of 100 MB, download and upload alternating, streamed both
                 ways; the download's byte count and the upload's answer are checked
    websocket    10,000 WebSocket echo messages (16 in flight, sizes 16 B..4 KiB, text and
                 binary, each carrying its sequence number), 1,000 per connection, every
                 echo compared with what was sent
    reconnects   1,000 agent restarts: 10 extra hosts, each with its own loop of: start a
                 `relay agent` process, poll GET / through the relay until it answers 200,
                 stop the agent (SIGTERM and SIGKILL alternating); the 10 loops run at once

The relay's RSS (and its file descriptors, and the embedded Valkey's RSS) is sampled after
the warm-up, during and after each phase, and at the very end after a short idle settle.
Reported: RSS growth since the warm-up (goal < 10 MiB) and failures (goal 0).

    python -m loadtest.soak [--scale 1.0]    # --scale 0.01: a 1-2 minute smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from loadtest.common import BIN, Stack, api, log_summary, quiet_logs, rss_kib, run, status_kib
from loadtest.upstream import CHUNK

GETS = 1_000_000
TRANSFERS = 100
WS_MESSAGES = 10_000
RECONNECTS = 1_000
RECONNECT_HOSTS = 10
SIZE = 100 * 1024 * 1024
WS_PER_CONNECTION = 1_000
WS_WINDOW = 16
WRK_CONNECTIONS = 32
WRK_MAX_CHUNK_S = 30
GROWTH_GOAL_MIB = 10
SETTLE_S = 5
TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_read=30)


def scaled(count: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(count * scale))


# --- memory samples -----------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@dataclass(slots=True)
class Sample:
    label: str
    at: float  # time.monotonic()
    relay_kib: int
    relay_hwm_kib: int
    valkey_kib: int
    fds: int


@dataclass(slots=True)
class Memory:
    relay_pid: int
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)

    def sample(self, label: str) -> Sample:
        valkey = sum(rss_kib(pid) for pid in child_pids(self.relay_pid))
        s = Sample(
            label,
            time.monotonic(),
            rss_kib(self.relay_pid),
            status_kib(self.relay_pid, "VmHWM"),
            valkey,
            fd_count(self.relay_pid),
        )
        self.samples.append(s)
        return s

    def last(self, label: str) -> Sample:
        return next(s for s in reversed(self.samples) if s.label == label)


# --- phase 1: small GETs with wrk ---------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(slots=True)
class WrkRun:
    requests: int = 0
    seconds: float = 0.0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    exit_status: int = 0

    @property
    def failures(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values()) + (self.exit_status != 0)


def parse_wrk(text: str, status: int) -> WrkRun:
    out = WrkRun(exit_status=status)
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", text)
    if m is None:
        raise RuntimeError(f"wrk printed no summary (status {status}):\n{text[-2000:]}")
    out.requests = int(m.group(1))
    out.seconds = float(m.group(2)) * _UNITS[m.group(3)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out.non_2xx = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out.socket_errors = {
            k: int(v)
            for k, v in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True)
            if int(v)
        }
    return out


def wrk(url: str, host: str, seconds: int) -> WrkRun:
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-H", f"Host: {host}", url + "/"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return parse_wrk(proc.stdout + proc.stderr, proc.returncode)


@dataclass(slots=True)
class GetFigures:
    target: int
    requests: int = 0
    seconds: float = 0.0
    non_2xx: int = 0
    socket_errors: Counter = field(default_factory=Counter)
    wrk_failed_runs: int = 0
    chunks: int = 0

    @property
    def failures(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values()) + self.wrk_failed_runs


def get_phase(stack: Stack, target: int, memory: Memory | None, label: str) -> GetFigures:
    """Run wrk in chunks (<= 30 s each, the last one sized by the rate) until ``target``."""
    figures = GetFigures(target)
    rate = 0.0
    budget = max(120.0, target / 500)  # gives up below 500 req/s: bounded in time
    started = time.monotonic()
    while figures.requests < target and time.monotonic() - started < budget:
        left = target - figures.requests
        if rate == 0:  # first run: short, to learn the rate
            seconds = max(1, min(5, math.ceil(left / 10_000)))
        else:
            seconds = min(WRK_MAX_CHUNK_S, max(1, math.ceil(left / rate)))
        one = wrk(stack.relay_url, stack.host_header, seconds)
        figures.chunks += 1
        figures.requests += one.requests
        figures.seconds += one.seconds
        figures.non_2xx += one.non_2xx
        figures.socket_errors.update(one.socket_errors)
        figures.wrk_failed_runs += one.exit_status != 0
        rate = figures.requests / figures.seconds if figures.seconds else 0.0
        if memory is not None:
            memory.sample(label)
    return figures


# --- phase 2: 100 MB transfers ------------------------------------------------------------


async def _body(size: int):
    sent = 0
    while sent < size:
        piece = CHUNK if size - sent >= len(CHUNK) else CHUNK[: size - sent]
        sent += len(piece)
        yield piece


async def one_transfer(session: aiohttp.ClientSession, stack: Stack, kind: str) -> str | None:
    """One 100 MB transfer; None when it went right, else what went wrong."""
    headers = {"Host": stack.host_header}
    try:
        if kind == "download":
            got = 0
            url = f"{stack.relay_url}/download?size={SIZE}"
            async with session.get(url, headers=headers) as r:
                if r.status != 200:
                    return f"download HTTP {r.status}"
                async for chunk in r.content.iter_any():
                    got += len(chunk)
            return None if got == SIZE else f"download got {got} of {SIZE} bytes"
        headers |= {"Content-Length": str(SIZE), "Content-Type": "application/octet-stream"}
        async with session.post(
            stack.relay_url + "/upload", data=_body(SIZE), headers=headers
        ) as r:
            text = await r.text()
            if r.status != 200:
                return f"upload HTTP {r.status} {text[:80]}"
        return None if text.strip() == str(SIZE) else f"upload answered {text[:80]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{kind} {type(exc).__name__}: {str(exc)[:100]}"


@dataclass(slots=True)
class TransferFigures:
    count: int
    done: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


async def transfer_phase(
    stack: Stack, count: int, memory: Memory | None, label: str
) -> TransferFigures:
    figures = TransferFigures(count)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=TRANSFER_TIMEOUT) as session:
        for i in range(count):
            error = await one_transfer(session, stack, ("download", "upload")[i % 2])
            figures.done += 1
            if error:
                figures.failures.append(error)
            if memory is not None and (i + 1) % 10 == 0:
                memory.sample(label)
    figures.seconds = time.monotonic() - t0
    return figures


# --- phase 3: WebSocket echo ------------------------------------------------------------------


def ws_payload(seq: int, rng: random.Random) -> str | bytes:
    size = rng.choice((16, 100, 1000, 4096))
    if seq % 2:
        return f"{seq:010d}:" + "x" * (size - 11)
    return seq.to_bytes(8, "big") + rng.randbytes(size - 8)


async def ws_connection(stack: Stack, first_seq: int, count: int, rng: random.Random) -> list[str]:
    """``count`` echoes on one WebSocket, ``WS_WINDOW`` in flight; the mismatches/errors."""
    url = stack.relay_url.replace("http", "ws", 1) + "/ws"
    errors: list[str] = []
    timeout = aiohttp.ClientWSTimeout(ws_receive=30)
    pending: deque[str | bytes] = deque()
    sent = received = 0
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                url, headers={"Host": stack.host_header}, compress=0, timeout=timeout
            ) as ws,
        ):
            while received < count:
                while sent < count and len(pending) < WS_WINDOW:
                    payload = ws_payload(first_seq + sent, rng)
                    if isinstance(payload, str):
                        await ws.send_str(payload)
                    else:
                        await ws.send_bytes(payload)
                    pending.append(payload)
                    sent += 1
                msg = await ws.receive()
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    errors.append(f"got {msg.type.name} after {received} echoes")
                    return errors
                expected = pending.popleft()
                received += 1
                if msg.data != expected:
                    errors.append(f"echo {first_seq + received - 1} differs from what was sent")
    except (aiohttp.ClientError, TimeoutError) as exc:
        errors.append(f"{type(exc).__name__}: {str(exc)[:100]} after {received} echoes")
    if received < count and not errors:
        errors.append(f"only {received} of {count} echoes")
    return errors


@dataclass(slots=True)
class WsFigures:
    messages: int
    connections: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


async def ws_phase(stack: Stack, messages: int, memory: Memory | None, label: str) -> WsFigures:
    figures = WsFigures(messages)
    rng = random.Random(1)
    t0 = time.monotonic()
    done = 0
    while done < messages:
        count = min(WS_PER_CONNECTION, messages - done)
        figures.failures += await ws_connection(stack, done, count, rng)
        figures.connections += 1
        done += count
        if memory is not None:
            memory.sample(label)
    figures.seconds = time.monotonic() - t0
    return figures


# --- phase 4: agent reconnects ------------------------------------------------------------


@dataclass(slots=True)
class ReconnectFigures:
    count: int
    hosts: int
    done: int = 0
    seconds: float = 0.0
    connect_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # Answers other than 200 while polling for the new agent. The first cycle of a host
    # gets 503 host_offline until its agent is up (its last tunnel left more than the
    # relay's 5 s reconnect grace ago): expected, not a failure. Later cycles should get
    # none: the relay holds a request for a tunnel that left within the grace.
    waiting_answers: Counter = field(default_factory=Counter)
    exits: Counter = field(default_factory=Counter)


def agent_argv(stack: Stack, token: str) -> list[str]:
    return [
        str(BIN / "relay"),
        "agent",
        "--server",
        stack.relay_url,
        "--token",
        token,
        "--to",
        stack.direct_url,
        "--log-level",
        "warning",
    ]


async def poll_until_up(
    session: aiohttp.ClientSession, stack: Stack, slug: str, deadline: float, figures, first: bool
) -> bool:
    host = f"{slug}.localhost:{stack.relay_port}"
    which = "first cycle: " if first else "later cycles: "
    while time.monotonic() < deadline:
        try:
            async with session.get(stack.relay_url + "/", headers={"Host": host}) as r:
                body = await r.read()
                if r.status == 200 and body == b"hello world\n":
                    return True
                figures.waiting_answers[f"{which}{r.status} {error_code(body)}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            figures.waiting_answers[which + type(exc).__name__] += 1
        await asyncio.sleep(0.02)
    return False


def error_code(body: bytes) -> str:
    m = re.search(rb'"code"\s*:\s*"([^"]+)"', body)
    return m.group(1).decode() if m else body[:40].decode(errors="replace")


async def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return proc.poll()


async def reconnect_loop(
    stack: Stack,
    index: int,
    slug: str,
    token: str,
    cycles: int,
    figures: ReconnectFigures,
    live: set[subprocess.Popen],
) -> None:
    log_path = stack.tmp / f"agent-r{index}.log"
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for cycle in range(cycles):
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    agent_argv(stack, token),
                    env=stack.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            live.add(proc)
            t0 = time.monotonic()
            try:
                if await poll_until_up(session, stack, slug, t0 + 30, figures, cycle == 0):
                    figures.connect_s.append(time.monotonic() - t0)
                else:
                    figures.failures.append(f"host {slug} cycle {cycle}: not up after 30 s")
                sig = signal.SIGTERM if (index + cycle) % 2 == 0 else signal.SIGKILL
                if proc.poll() is not None:
                    figures.failures.append(
                        f"host {slug} cycle {cycle}: agent exited by itself ({proc.returncode})"
                    )
                    continue
                proc.send_signal(sig)
                status = await wait_exit(proc, 15)
                if status is None:
                    figures.failures.append(
                        f"host {slug} cycle {cycle}: agent still running 15 s after {sig.name}"
                    )
                    proc.kill()
                    status = await wait_exit(proc, 5)
                figures.exits[f"{sig.name} -> {status}"] += 1
                if sig == signal.SIGTERM and status != 0:
                    figures.failures.append(
                        f"host {slug} cycle {cycle}: exit status {status} after SIGTERM"
                    )
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                live.discard(proc)
                figures.done += 1


async def reconnect_phase(
    stack: Stack, hosts: list[dict], count: int, memory: Memory | None, label: str
) -> ReconnectFigures:
    figures = ReconnectFigures(count, len(hosts))
    live: set[subprocess.Popen] = set()
    per_host = [count // len(hosts) + (i < count % len(hosts)) for i in range(len(hosts))]
    t0 = time.monotonic()

    async def sampler() -> None:
        while True:
            await asyncio.sleep(10)
            if memory is not None:
                memory.sample(label)

    ticker = asyncio.create_task(sampler())
    try:
        await asyncio.gather(
            *(
                reconnect_loop(stack, i, h["slug"], h["token"], n, figures, live)
                for i, (h, n) in enumerate(zip(hosts, per_host, strict=True))
                if n
            )
        )
    finally:
        ticker.cancel()
        for proc in live:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    figures.seconds = time.monotonic() - t0
    if memory is not None:
        memory.sample(label)
    return figures


# --- the whole run --------------------------------------------------------------------------


def measure(scale: float = 1.0, verbose: bool = True) -> dict:
    """Run the soak at ``scale`` (every count times it); the figures as a dict."""
    counts = {
        "gets": scaled(GETS, scale),
        "transfers": scaled(TRANSFERS, scale, minimum=2),
        "ws_messages": scaled(WS_MESSAGES, scale),
        "reconnects": scaled(RECONNECTS, scale),
    }
    reconnect_hosts = min(RECONNECT_HOSTS, counts["reconnects"])
    if verbose:
        print(f"soak at scale {scale:g}: {counts}", flush=True)
    t_start = time.monotonic()
    stack = Stack("--log-level", "warning", agent_args=("--log-level", "warning"))
    try:
        hosts = [
            api("POST", stack.relay_url + "/api/hosts", {"name": f"soak-reconnect-{i}"})
            for i in range(reconnect_hosts)
        ]
        memory = Memory(stack.relay.pid)
        memory.sample("start")
        phase_s: dict[str, float] = {}

        def note(phase: str, t0: float) -> None:
            phase_s[phase] = time.monotonic() - t0
            s = memory.sample(phase)
            if verbose:
                print(
                    f"  {phase:<10} done in {phase_s[phase]:6.1f} s; relay RSS"
                    f" {s.relay_kib / 1024:.1f} MiB, {s.fds} fds",
                    flush=True,
                )

        # Warm-up: a little of everything, so caches, pools and arenas have their size.
        t0 = time.monotonic()
        warm = {
            "gets": get_phase(stack, 20_000, None, "warm-up"),
            "transfers": run(transfer_phase(stack, 2, None, "warm-up")),
            "ws": run(ws_phase(stack, 500, None, "warm-up")),
            "reconnects": run(reconnect_phase(stack, hosts, len(hosts), None, "warm-up")),
        }
        note("warm-up", t0)
        t0 = time.monotonic()
        gets = get_phase(stack, counts["gets"], memory, "gets")
        note("gets", t0)
        t0 = time.monotonic()
        transfers = run(transfer_phase(stack, counts["transfers"], memory, "transfers"))
        note("transfers", t0)
        t0 = time.monotonic()
        ws = run(ws_phase(stack, counts["ws_messages"], memory, "websocket"))
        note("websocket", t0)
        t0 = time.monotonic()
        reconnects = run(reconnect_phase(stack, hosts, counts["reconnects"], memory, "reconnects"))
        note("reconnects", t0)
        time.sleep(SETTLE_S)
        memory.sample("end")
        relay_alive = stack.relay.poll() is None
        relay_warnings = log_summary(stack.log("relay"))
    finally:
        stack.close()
    figures = figures_of(
        scale,
        counts,
        memory,
        phase_s,
        warm=warm,
        gets=gets,
        transfers=transfers,
        ws=ws,
        reconnects=reconnects,
        alive=relay_alive,
    )
    figures["relay_log"] = relay_warnings
    figures["wall_s"] = time.monotonic() - t_start
    if verbose:
        report(figures)
    return figures


def figures_of(scale, counts, memory, phase_s, *, warm, gets, transfers, ws, reconnects, alive):
    base = memory.last("warm-up")
    end = memory.last("end")
    after = memory.samples[memory.samples.index(base) :]
    peak = max(after, key=lambda s: s.relay_kib)
    warm_failures = (
        warm["gets"].failures
        + len(warm["transfers"].failures)
        + len(warm["ws"].failures)
        + len(warm["reconnects"].failures)
    )
    failures = gets.failures + len(transfers.failures) + len(ws.failures) + len(reconnects.failures)
    connect = sorted(reconnects.connect_s)
    return {
        "scale": scale,
        "counts": counts,
        "phase_s": phase_s,
        "rss_mib": {
            label: memory.last(label).relay_kib / 1024
            for label in ("start", "warm-up", "gets", "transfers", "websocket", "reconnects", "end")
        },
        "rss_growth_mib": (end.relay_kib - base.relay_kib) / 1024,
        "rss_peak_after_warmup_mib": peak.relay_kib / 1024,
        "rss_peak_label": peak.label,
        "relay_hwm_mib": end.relay_hwm_kib / 1024,
        "valkey_rss_mib": {"warm-up": base.valkey_kib / 1024, "end": end.valkey_kib / 1024},
        "fds": {"warm-up": base.fds, "end": end.fds},
        "samples": [
            (s.label, round(s.at - memory.started, 1), s.relay_kib, s.fds) for s in memory.samples
        ],
        "gets": {
            "requests": gets.requests,
            "target": gets.target,
            "seconds": gets.seconds,
            "rate": gets.requests / gets.seconds if gets.seconds else 0.0,
            "non_2xx": gets.non_2xx,
            "socket_errors": dict(gets.socket_errors),
            "wrk_failed_runs": gets.wrk_failed_runs,
            "chunks": gets.chunks,
        },
        "transfers": {
            "done": transfers.done,
            "seconds": transfers.seconds,
            "mb_per_s": transfers.done * SIZE / 1e6 / transfers.seconds
            if transfers.seconds
            else 0.0,
            "failures": transfers.failures,
        },
        "websocket": {
            "messages": ws.messages,
            "connections": ws.connections,
            "seconds": ws.seconds,
            "failures": ws.failures,
        },
        "reconnects": {
            "done": reconnects.done,
            "hosts": reconnects.hosts,
            "seconds": reconnects.seconds,
            "up_median_s": connect[len(connect) // 2] if connect else None,
            "up_max_s": connect[-1] if connect else None,
            "failures": reconnects.failures,
            "waiting_answers": dict(reconnects.waiting_answers),
            "exits": dict(reconnects.exits),
        },
        "warmup_failures": warm_failures,
        "failures": failures + (not alive),
        "relay_alive_at_end": alive,
    }


def report(f: dict) -> None:
    c = f["counts"]
    print()
    print(
        f"soak (scale {f['scale']:g}): one relay + embedded Valkey, one agent, wall {f['wall_s']:.0f} s"
    )
    print("  relay RSS (MiB) at the end of each phase:")
    for label, mib in f["rss_mib"].items():
        seconds = f["phase_s"].get(label)
        took = f"  ({seconds:.0f} s)" if seconds is not None else ""
        print(f"    {label:<10} {mib:7.1f}{took}")
    print(
        f"  RSS growth since warm-up: {f['rss_growth_mib']:+.1f} MiB (goal < {GROWTH_GOAL_MIB});"
        f" peak after warm-up {f['rss_peak_after_warmup_mib']:.1f} MiB ({f['rss_peak_label']}),"
        f" VmHWM {f['relay_hwm_mib']:.1f} MiB"
    )
    print(
        f"  relay fds {f['fds']['warm-up']} -> {f['fds']['end']};"
        f" embedded Valkey RSS {f['valkey_rss_mib']['warm-up']:.1f} ->"
        f" {f['valkey_rss_mib']['end']:.1f} MiB"
    )
    g = f["gets"]
    print(
        f"  gets      : {g['requests']} of {g['target']} in {g['seconds']:.0f} s"
        f" ({g['rate']:.0f} req/s, {g['chunks']} wrk runs); non-2xx {g['non_2xx']},"
        f" socket errors {g['socket_errors'] or 0}, wrk failed {g['wrk_failed_runs']}"
    )
    t = f["transfers"]
    print(
        f"  transfers : {t['done']} of {c['transfers']} x 100 MB in {t['seconds']:.0f} s"
        f" ({t['mb_per_s']:.0f} MB/s); failed {len(t['failures'])} {t['failures'][:3]}"
    )
    w = f["websocket"]
    print(
        f"  websocket : {w['messages']} echoes on {w['connections']} connections in"
        f" {w['seconds']:.1f} s; failed {len(w['failures'])} {w['failures'][:3]}"
    )
    r = f["reconnects"]
    up = (
        f"up in median {r['up_median_s']:.2f} s, max {r['up_max_s']:.2f} s"
        if r["up_median_s"] is not None
        else "never up"
    )
    print(
        f"  reconnects: {r['done']} of {c['reconnects']} on {r['hosts']} hosts in"
        f" {r['seconds']:.0f} s ({up}); failed {len(r['failures'])} {r['failures'][:3]}"
    )
    print(f"              agent exits {r['exits']}; answers while waiting {r['waiting_answers']}")
    print(
        f"  failures  : {f['failures']} (goal 0); warm-up failures {f['warmup_failures']};"
        f" relay alive at the end: {f['relay_alive_at_end']}"
    )
    print(f"  relay log (warning and up): {f['relay_log'] or 'nothing'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="times every count")
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be > 0")
    quiet_logs()
    measure(args.scale)


if __name__ == "__main__":
    main()
