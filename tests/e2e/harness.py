"""Real processes for end-to-end tests: `relay serve`, `relay agent`, on loopback only."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from directory.keys import Keys
from directory.store import StoreClient, connect

RELAY = str(Path(sys.executable).with_name("relay"))
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef0123"
# Runs a test once more with its relays on a three-master Valkey cluster (--redis-cluster).
on_both_stores = pytest.mark.parametrize("store", ["single", "cluster"], indirect=True)
METRICS_TOKEN = "e2e-metrics-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(
    predicate, *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
):
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def returncode(self) -> int | None:
        assert self.popen is not None
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not exit within {timeout}s\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.02)
        return self.popen.returncode

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=10)
        self._log.close()

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory now, or its peak so far with ``field="VmHWM"``.

        Memory tests compare peaks: memory reclaim (DAMON on this VM) lowers the current
        figure at random, which read as growth when it struck the figure before.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")


@dataclass
class Cluster:
    """Processes of one test, stopped together."""

    tmp: Path
    redis_url: str
    prefix: str
    redis_cluster: bool = False  # the store is a Redis Cluster: relays get --redis-cluster
    procs: list[Proc] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        """The key names of this test's relays."""
        return Keys(self.prefix)

    async def store(self) -> StoreClient:
        """A client on the relays' store (a cluster client when it is one); close it."""
        return await connect(self.redis_url, cluster=self.redis_cluster)

    def env(self, **extra: str) -> dict[str, str]:
        # OTEL_* too: a developer's collector settings must not turn tracing on in tests.
        inherited = ("RELAY_", "REDIS_URL", "FLY_", "OTEL_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        env.update(
            {
                "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
                "RELAY_METRICS_TOKEN": METRICS_TOKEN,
                "RELAY_LOG_FORMAT": "json",
            }
        )
        env.update(extra)
        return env

    async def relay(
        self, *args: str, machine_id: str | None = None, ipv6: bool = False, **env: str
    ) -> Relay:
        """A `relay serve` on loopback; ``ipv6``: dual stack, advertised as ``[::1]``."""
        port = free_port()
        machine_id = machine_id or f"m{len(self.procs)}"
        argv = [
            RELAY,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--redis-url",
            self.redis_url,
            "--key-prefix",
            self.prefix,
            "--machine-id",
            machine_id,
            "--data-dir",
            str(self.tmp / f"data-{machine_id}"),
            "--ping-interval",
            "0.5",
            "--ping-misses",
            "3",
            "--reconnect-grace",
            "0.5",
            *(["--redis-cluster"] if self.redis_cluster else []),
            *args,
        ]
        if ipv6:
            argv[argv.index("--listen") + 1] = f"[::]:{port}"
            argv += ["--advertise", f"http://[::1]:{port}"]
        for _attempt in range(3):
            proc = Proc(
                f"relay-{machine_id}", argv, self.env(**env), self.tmp / f"relay-{machine_id}.log"
            ).start()
            self.procs.append(proc)
            relay = Relay(proc, port, machine_id)
            try:
                await wait_until(relay.healthy, timeout=20, what=f"relay {machine_id} /healthz\n")
                return relay
            except AssertionError:
                # free_port() can race with another process grabbing the port: try another.
                if "address already in use" not in proc.log():
                    raise
                port = free_port()
                argv[argv.index("--listen") + 1] = f"[::]:{port}" if ipv6 else f"127.0.0.1:{port}"
                if ipv6:
                    argv[argv.index("--advertise") + 1] = f"http://[::1]:{port}"
        raise AssertionError(f"relay {machine_id} found no free port")

    def agent(
        self, relay: Relay | str, token: str, to: str, *args: str, name: str = "agent", **env: str
    ) -> Proc:
        server = relay if isinstance(relay, str) else relay.url
        argv = [
            RELAY,
            "agent",
            "--server",
            server,
            "--token",
            token,
            "--to",
            to,
            "--ping-interval",
            "0.5",
            "--silence-timeout",
            "2",
            "--max-backoff",
            "0.5",
            *args,
        ]
        proc = Proc(name, argv, self.env(**env), self.tmp / f"{name}-{len(self.procs)}.log").start()
        self.procs.append(proc)
        return proc

    async def edge(self, relays: list[Relay]) -> Edge:
        port = free_port()
        argv = [RELAY, "edge", "--listen", f"127.0.0.1:{port}"]
        for relay in relays:
            argv += ["--machine", f"{relay.machine_id}={relay.url}"]
        proc = Proc("edge", argv, self.env(), self.tmp / "edge.log").start()
        self.procs.append(proc)
        edge = Edge(proc, port)

        async def up() -> bool:
            async with httpx.AsyncClient(timeout=1) as c:
                return (await c.get(f"{edge.url}/healthz")).status_code == 200

        await wait_until(up, timeout=15, what="relay edge up")
        return edge

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass
class Edge:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, slug: str, **kw) -> httpx.AsyncClient:
        kw.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.url, headers={"Host": f"{slug}.localhost"}, **kw)


@dataclass
class Relay:
    proc: Proc
    port: int
    machine_id: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )

    def client(self, slug: str, **kw) -> httpx.AsyncClient:
        """A client whose requests carry Host <slug>.localhost but connect to loopback."""
        kw.setdefault("timeout", 30)
        return httpx.AsyncClient(
            base_url=self.url, headers={"Host": f"{slug}.localhost:{self.port}"}, **kw
        )

    async def healthy(self) -> bool:
        if self.proc.returncode() is not None:
            raise AssertionError(f"relay exited early:\n{self.proc.log()[-3000:]}")
        async with httpx.AsyncClient(timeout=1) as c:
            return (await c.get(f"{self.url}/healthz")).status_code == 200

    async def add_host(self, name: str = "h", slug: str | None = None) -> dict:
        async with self.api() as api:
            body = {"name": name} | ({"slug": slug} if slug else {})
            r = await api.post("/api/hosts", json=body)
            assert r.status_code == 201, r.text
            return r.json()

    async def host(self, ref: str) -> dict:
        async with self.api() as api:
            r = await api.get(f"/api/hosts/{ref}")
            assert r.status_code == 200, r.text
            return r.json()

    async def wait_online(self, slug: str, timeout: float = 10.0) -> None:
        async def reachable() -> bool:
            async with self.client(slug) as c:
                r = await c.get("/__relay_probe__")
                return r.status_code not in {502, 503}

        await wait_until(reachable, timeout=timeout, what=f"{slug} online via {self.machine_id}")

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient(timeout=5) as c:
            auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            text = (await c.get(f"{self.url}/metrics", headers=auth)).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(re.search(rf'{k}="{re.escape(v)}"', line) for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total
