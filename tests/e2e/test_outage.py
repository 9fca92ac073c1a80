"""End-to-end: the store goes away and comes back (with and without its data).

Single server only: these tests stop, wipe and restart the embedded store process.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import httpx
import pytest
import redis.asyncio as redis_async

from directory.embedded import EmbeddedValkey
from directory.keys import Keys
from tests.e2e.harness import RELAY, Cluster, Proc, Relay, free_port, wait_until

pytestmark = pytest.mark.e2e


async def owner_of(url: str, prefix: str, host_id: str) -> bytes | None:
    client = redis_async.Redis.from_url(url)
    try:
        return await client.get(Keys(prefix).owner(host_id))
    finally:
        await client.aclose()


async def ready(relay) -> int:
    async with httpx.AsyncClient(timeout=2) as c:
        return (await c.get(f"{relay.url}/readyz")).status_code


@pytest.mark.parametrize("wipe", [False, True], ids=["restart", "restart-empty"])
async def test_store_outage_keeps_held_tunnels_serving_and_ownership_comes_back(
    tmp_path, upstream, wipe
):
    store_dir = tmp_path / "store"
    store = EmbeddedValkey(store_dir)
    url = await store.start()
    cluster = Cluster(tmp_path, url, prefix="outage")
    try:
        relay = await cluster.relay()
        host = await relay.add_host("steady")
        other = await relay.add_host("elsewhere")
        leaving = await relay.add_host("leaving")
        cluster.agent(relay, host["token"], upstream.url)
        leaver = cluster.agent(relay, leaving["token"], upstream.url, name="leaver")
        await relay.wait_online(host["slug"])
        await relay.wait_online(leaving["slug"])
        assert await owner_of(url, "outage", host["id"]) is not None

        await store.stop()
        if wipe:
            shutil.rmtree(store_dir / "valkey" / "appendonlydir")
        async with relay.client(host["slug"]) as c:
            for _ in range(20):  # held tunnel: served without the directory
                assert (await c.get("/hello")).status_code == 200
        async with relay.client(other["slug"]) as c:
            r = await c.get("/")  # needs the directory: a clear 503
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "store_unavailable"
        # Still ready: held tunnels serve, and a store outage must not take every
        # machine out of the proxy's routing at once. Health says what is wrong.
        assert await ready(relay) == 200
        await wait_until(
            lambda: '"store.unreachable"' in relay.proc.log(), what="outage noticed by refresh"
        )
        async with httpx.AsyncClient(timeout=2) as c:
            assert (await c.get(f"{relay.url}/healthz")).json()["store"] == "unreachable"
        # A tunnel that ends during the outage: its Disconnected waits in the outbox.
        leaver.signal(signal.SIGTERM)
        assert await leaver.wait_exit() == 0

        store = EmbeddedValkey(store_dir)
        assert await store.start() == url
        await wait_until(
            lambda: owner_of(url, "outage", host["id"]), timeout=10, what="owner re-asserted"
        )
        # With its data the store brings the key back itself; empty, only the relay's
        # re-assertion does. Either way the relay must notice the recovery.
        await wait_until(
            lambda: '"store.recovered"' in relay.proc.log(), what="recovery noticed by refresh"
        )
        assert await owner_of(url, "outage", host["id"]) is not None
        assert await ready(relay) == 200
        async with relay.client(host["slug"]) as c:
            assert (await c.get("/hello")).status_code == 200
        if not wipe:
            async with relay.client(other["slug"]) as c:
                assert (await c.get("/")).status_code == 503  # known, offline

            # No event lost: the end that happened during the outage reaches presence,
            # and the held tunnel shows online (re-announced if its record had expired).
            async def presence_caught_up() -> bool:
                held, left = await relay.host(host["id"]), await relay.host(leaving["id"])
                return held["online"] and left["disconnect_reason"] == "closed"

            await wait_until(presence_caught_up, timeout=10, what="presence after the outage")
            assert (await relay.host(leaving["id"]))["online"] is False
    finally:
        cluster.stop()
        await store.stop()


async def test_a_stalled_store_costs_a_request_the_store_timeout_not_more(tmp_path, upstream):
    store = EmbeddedValkey(tmp_path / "store")
    url = await store.start()
    cluster = Cluster(tmp_path, url, prefix="stall")
    try:
        relay = await cluster.relay("--store-timeout", "1")
        host = await relay.add_host("steady")
        other = await relay.add_host("elsewhere")
        cluster.agent(relay, host["token"], upstream.url)
        await relay.wait_online(host["slug"])
        assert store.pid is not None
        os.kill(store.pid, signal.SIGSTOP)
        try:
            async with relay.client(other["slug"], timeout=10) as c:
                started = time.monotonic()
                r = await c.get("/")
                took = time.monotonic() - started
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "store_unavailable"
            assert r.headers["retry-after"]
            assert took < 3.5, took  # the deadline (1 s) and a little, not the old ~19 s
            async with relay.client(host["slug"]) as c:
                assert (await c.get("/hello")).status_code == 200  # held: no store needed
            assert '"proxy.store_error"' in relay.proc.log()
        finally:
            os.kill(store.pid, signal.SIGCONT)

        async def offline_again() -> bool:
            async with relay.client(other["slug"]) as c:
                r = await c.get("/")
            return r.json()["error"]["code"] == "host_offline"

        await wait_until(offline_again, what="the store answers again")
    finally:
        cluster.stop()
        await store.stop()


async def test_the_embedded_store_is_restarted_when_killed(tmp_path, upstream):
    cluster = Cluster(tmp_path, "unused", prefix="embedded")
    port = free_port()
    argv = [RELAY, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")]
    proc = Proc("relay-embedded", argv, cluster.env(), tmp_path / "relay.log").start()
    cluster.procs.append(proc)
    relay = Relay(proc, port, "embedded")
    try:
        await wait_until(relay.healthy, timeout=20, what="relay with its embedded store")
        host = await relay.add_host("kept")
        (store_pid,) = _children(proc.pid)  # the embedded Valkey
        os.kill(store_pid, signal.SIGKILL)
        await wait_until(
            lambda: '"store.embedded_restarted"' in proc.log(), timeout=15, what="a restart"
        )
        assert '"store.embedded_died"' in proc.log()
        assert (await relay.host(host["id"]))["slug"] == host["slug"]  # data kept
        assert await relay.metric("relay_store_embedded_restarts_total") >= 1
        (new_pid,) = _children(proc.pid)
        assert new_pid != store_pid
        assert store_pid not in _children(proc.pid, zombies=True)  # reaped
    finally:
        cluster.stop()


def _children(pid: int, *, zombies: bool = False) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
                found.append(int(entry))
    return found
