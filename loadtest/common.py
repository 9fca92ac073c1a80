"""Process plumbing shared by the benchmarks: start the real relay, agent and upstream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
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


class Stack:
    """upstream + relay (embedded Valkey) + agent, each its own process."""

    def __init__(self, *relay_args: str, agent_args: tuple[str, ...] = ()) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.up_port, self.relay_port = free_port(), free_port()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "REDIS_URL"
        }
        env["RELAY_ADMIN_TOKEN"] = ADMIN
        env["RELAY_LOG_FORMAT"] = "json"
        env["RELAY_LOG_LEVEL"] = "warning"
        self.env = env
        self.upstream = self._spawn(
            "upstream", [sys.executable, "-m", "loadtest.upstream", "--port", str(self.up_port)]
        )
        self.relay = self._spawn(
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
        self.agent = self._spawn(
            "agent",
            [
                str(BIN / "relay"),
                "agent",
                "--server",
                f"http://127.0.0.1:{self.relay_port}",
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

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        p = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def stack(*relay_args: str, agent_args: tuple[str, ...] = ()):
    s = Stack(*relay_args, agent_args=agent_args)
    try:
        yield s
    finally:
        s.close()
