"""End-to-end presence: real relays, agents and store; status must never lie for long."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import datetime
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import redis.asyncio as redis_async

from tests.e2e.harness import RELAY, on_both_stores, wait_until
from tests.e2e.tcpproxy import BlackholeProxy

pytestmark = pytest.mark.e2e

PING = 0.5  # the harness runs relays and agents with 0.5 s pings, 3 misses
OWNER_TTL = PING * 3


# --- helpers ----------------------------------------------------------------------------


async def status(relay, host_id):
    return await relay.host(host_id)


async def wait_status(relay, host_id, check, *, timeout=10.0, what="status"):
    """Poll the host's status until ``check(status)``; returns that status."""
    found = {}

    async def ok():
        found["s"] = await status(relay, host_id)
        return check(found["s"])

    await wait_until(ok, timeout=timeout, interval=0.02, what=f"{what} (last: {found.get('s')})")
    return found["s"]


def parse_time(value):
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value).timestamp()


async def events(relay, **params):
    async with relay.api() as api:
        r = await api.get("/api/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def connected(cluster, upstream, relay=None, name="web"):
    relay = relay or await cluster.relay()
    host = await relay.add_host(name)
    agent = cluster.agent(relay, host["token"], upstream.url)
    return relay, host, agent


# --- the tests --------------------------------------------------------------------------


@on_both_stores
async def test_connect_shows_online_within_a_second_with_all_details(cluster, upstream):
    relay, host, agent = await connected(cluster, upstream)
    await wait_until(lambda: '"agent.connected"' in agent.log(), what="agent connected")
    t0 = time.monotonic()
    s = await wait_status(relay, host["id"], lambda s: s["online"], timeout=1.0, what="online")
    assert time.monotonic() - t0 < 1.0
    assert s["machine_id"] == relay.machine_id
    assert isinstance(s["epoch"], int) and s["epoch"] >= 1
    assert s["remote_addr"] == "127.0.0.1"
    assert s["agent_version"]
    assert abs(parse_time(s["last_connected_at"]) - time.time()) < 10
    assert s["last_disconnected_at"] is None and s["disconnect_reason"] is None


async def test_agent_stop_shows_offline_with_reason_closed(cluster, upstream):
    relay, host, agent = await connected(cluster, upstream)
    await wait_status(relay, host["id"], lambda s: s["online"], what="online")
    agent.signal(signal.SIGTERM)
    assert await agent.wait_exit() == 0
    s = await wait_status(relay, host["id"], lambda s: not s["online"], timeout=3, what="offline")
    assert s["disconnect_reason"] == "closed"
    assert parse_time(s["last_disconnected_at"]) >= parse_time(s["last_connected_at"])
    assert s["machine_id"] == relay.machine_id  # where it was last seen


async def test_a_blackholed_agent_goes_offline_as_missed_pong_then_comes_back(cluster, upstream):
    relay = await cluster.relay()
    proxy = await BlackholeProxy(relay.port).start()
    try:
        host = await relay.add_host("hole")
        cluster.agent(proxy.url, host["token"], upstream.url)
        first = await wait_status(relay, host["id"], lambda s: s["online"], what="online")
        proxy.blackhole()
        t0 = time.monotonic()
        s = await wait_status(
            relay, host["id"], lambda s: not s["online"], timeout=OWNER_TTL + 5, what="offline"
        )
        assert s["disconnect_reason"] == "missed_pong"
        assert time.monotonic() - t0 < OWNER_TTL + 2.5
        proxy.restore()  # the agent's next dial gets through
        again = await wait_status(
            relay, host["id"], lambda s: s["online"], timeout=15, what="online again"
        )
        assert again["epoch"] > first["epoch"]
        assert again["disconnect_reason"] == "missed_pong"  # the last disconnect, kept
    finally:
        await proxy.stop()


@on_both_stores
async def test_replacement_reports_replaced_and_never_shows_the_host_offline(cluster, upstream):
    relay, host, first = await connected(cluster, upstream)
    before = await wait_status(relay, host["id"], lambda s: s["online"], what="online")
    seen = []
    stop = asyncio.Event()

    async def watch():
        async with relay.api() as api:
            while not stop.is_set():
                seen.append((await api.get(f"/api/hosts/{host['id']}")).json())
                await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    cluster.agent(relay, host["token"], upstream.url, name="second")
    after = await wait_status(
        relay,
        host["id"],
        lambda s: s["epoch"] > before["epoch"] and s["disconnect_reason"] == "replaced",
        what="replaced by the second agent",
    )
    await wait_until(lambda: '"agent.replaced"' in first.log(), what="first agent told 4002")
    await asyncio.sleep(1.0)  # the first agent keeps retrying as a standby meanwhile
    stop.set()
    await watcher
    assert after["online"]
    assert len(seen) > 50
    assert all(s["online"] for s in seen), [s for s in seen if not s["online"]][:1]
    final = await status(relay, host["id"])
    assert final["online"] and final["epoch"] == after["epoch"]


async def test_a_killed_relay_is_noticed_as_owner_expired(cluster, upstream):
    survivor = await cluster.relay("--reconcile-interval", "0.5", machine_id="survivor")
    victim = await cluster.relay(machine_id="victim")  # same key prefix: one directory
    _, host, _ = await connected(cluster, upstream, relay=victim)
    await wait_status(
        survivor, host["id"], lambda s: s["online"] and s["machine_id"] == "victim", what="online"
    )
    victim.proc.signal(signal.SIGKILL)
    t0 = time.monotonic()
    s = await wait_status(
        survivor, host["id"], lambda s: not s["online"], timeout=10, what="owner expired"
    )
    elapsed = time.monotonic() - t0
    assert s["disconnect_reason"] == "owner_expired"
    assert s["machine_id"] == "victim"
    # owner TTL + one reconcile interval (+ the reconciler's settle and scheduling slack)
    assert elapsed < OWNER_TTL + 0.5 + 1.0, elapsed
    assert '"presence.owner_expired"' in survivor.proc.log()


async def test_a_machine_cut_off_from_the_store_is_online_again_under_a_new_epoch(
    cluster, upstream, valkey_url
):
    # Single server only: the cut-off machine reaches the store through a blackhole proxy
    # to its unix socket.
    # The reconciler (on the machine that still reaches the store) rightly reports the
    # cut-off machine's host as owner_expired; once the machine is back it still holds the
    # tunnel, and presence must say so again, without the agent reconnecting.
    survivor = await cluster.relay("--reconcile-interval", "0.5", machine_id="survivor")
    assert valkey_url.startswith("unix://"), valkey_url
    proxy = await BlackholeProxy(unix_path=unquote(urlsplit(valkey_url).path)).start()
    try:
        cutoff = await cluster.relay(
            "--redis-url", f"redis://127.0.0.1:{proxy.port}/0", machine_id="cutoff"
        )
        host = await survivor.add_host("cut")
        agent = cluster.agent(cutoff, host["token"], upstream.url)
        first = await wait_status(
            survivor, host["id"], lambda s: s["online"] and s["machine_id"] == "cutoff"
        )
        proxy.blackhole()
        gone = await wait_status(
            survivor, host["id"], lambda s: not s["online"], timeout=10, what="owner expired"
        )
        assert gone["disconnect_reason"] == "owner_expired"
        assert gone["epoch"] == first["epoch"]
        async with cutoff.client(host["slug"]) as c:  # the held tunnel still serves
            assert (await c.get("/hello")).status_code == 200

        proxy.restore()
        back = await wait_status(
            survivor,
            host["id"],
            lambda s: s["online"] and s["epoch"] > first["epoch"],
            timeout=15,
            what="online again under a new epoch",
        )
        assert back["machine_id"] == "cutoff"
        assert back["remote_addr"] == first["remote_addr"]
        assert back["disconnect_reason"] == "owner_expired"  # why it last went away, kept
        assert agent.log().count('"agent.connected"') == 1, "the agent never reconnected"
        assert '"tunnel.reclaimed"' in cutoff.proc.log()
        client = redis_async.Redis.from_url(valkey_url)
        try:
            owner = json.loads(await client.get(cluster.keys.owner(host["id"])))
        finally:
            await client.aclose()
        assert (owner["machine_id"], owner["epoch"]) == ("cutoff", back["epoch"])
        async with cutoff.client(host["slug"]) as c:
            assert (await c.get("/hello")).status_code == 200
    finally:
        await proxy.stop()


@on_both_stores
async def test_a_consumer_killed_mid_batch_has_its_entries_reclaimed_and_applied_once(cluster):
    n = 20
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.e2e.doomed_consumer",
        cluster.redis_url,
        cluster.prefix,
        str(n),
        "cluster" if cluster.redis_cluster else "single",
        stdout=asyncio.subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:

        async def half():
            while not (line := await proc.stdout.readline()).startswith(b"HALF"):
                assert line, "the doomed consumer exited early"
            return line

        assert (await asyncio.wait_for(half(), 15)).startswith(b"HALF 20")
    finally:
        proc.kill()
        await proc.wait()
    client = await cluster.store()
    try:
        stream = cluster.keys.events()
        assert (await client.xpending(stream, "presence"))["pending"] == n  # held by the dead
        relay = await cluster.relay("--events-claim-idle", "0.5")

        async def applied():
            raw = await client.hgetall(cluster.keys.presence())
            states = {k.decode(): json.loads(v) for k, v in raw.items()}
            done = [states.get(f"h_doomed_{i}", {}).get("online") for i in range(n)]
            pending = (await client.xpending(stream, "presence"))["pending"]
            return all(done) and pending == 0 and states

        states = await wait_until(applied, timeout=10, what="reclaimed and applied")
        for i in range(n):  # the half applied twice is, in effect, applied once
            p = states[f"h_doomed_{i}"]
            assert (p["epoch"], p["last_connected_at"], p["machine_id"]) == (
                1,
                1_000_000.0 + i,
                "m-doomed",
            )
        assert await client.xlen(cluster.keys.dead_letters()) == 0
        assert await relay.metric("relay_events_reclaimed_total", group="presence") >= n
        assert '"events.reclaimed"' in relay.proc.log()
    finally:
        await client.aclose()


async def test_a_poison_entry_is_dead_lettered_while_other_events_flow(cluster, upstream):
    relay = await cluster.relay()
    client = await cluster.store()
    try:
        await client.xadd(cluster.keys.events(), {"k": "connected", "e": b"\x00poison"})
        _, host, _ = await connected(cluster, upstream, relay=relay)
        await wait_status(relay, host["id"], lambda s: s["online"], what="others flow")
        await wait_until(
            lambda: '"events.dead_lettered"' in relay.proc.log(), what="dead letter logged"
        )
        ((_, parked),) = await client.xrange(cluster.keys.dead_letters())
        assert parked[b"e"] == b"\x00poison" and parked[b"group"] == b"presence"
        assert await relay.metric("relay_events_dead_lettered_total", group="presence") == 1
        assert (await client.xpending(cluster.keys.events(), "presence"))["pending"] == 0
    finally:
        await client.aclose()


async def test_events_api_pages_through_the_log_and_validates_its_parameters(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    await wait_status(relay, host["id"], lambda s: s["online"], what="online")
    page = await events(relay)
    kinds = [e["kind"] for e in page["events"]]
    assert kinds[:3] == ["machine_started", "host_registered", "connected"], kinds
    conn = page["events"][2]
    assert conn["host_id"] == host["id"] and conn["machine_id"] == relay.machine_id
    assert conn["remote_addr"] == "127.0.0.1" and conn["epoch"] >= 1
    assert set(conn) >= {"id", "kind", "at", "version"}
    assert parse_time(conn["at"]) > 0
    first = await events(relay, limit=1)
    assert [e["kind"] for e in first["events"]] == ["machine_started"]
    rest = await events(relay, after=first["next"])
    assert [e["id"] for e in rest["events"]] == [e["id"] for e in page["events"][1:]]
    tail = await events(relay, after=page["next"])
    assert tail == {"events": [], "next": page["next"]}
    async with relay.api() as api:
        for params in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"after": "soon"}):
            r = await api.get("/api/events", params=params)
            assert r.status_code == 422, params
            assert r.json()["error"]["code"] in {"invalid_limit", "invalid_after"}
    async with httpx.AsyncClient(base_url=relay.url) as anon:
        assert (await anon.get("/api/events")).status_code == 401


async def test_removing_a_host_records_removed_and_its_status_goes_away(cluster, upstream):
    relay, host, agent = await connected(cluster, upstream)
    await wait_status(relay, host["id"], lambda s: s["online"], what="online")
    async with relay.api() as api:
        assert (await api.delete(f"/api/hosts/{host['id']}")).status_code == 204
    assert await agent.wait_exit(15) == 3

    async def recorded():
        page = await events(relay)
        mine = [e for e in page["events"] if e.get("host_id") == host["id"]]
        return [e.get("reason", e["kind"]) for e in mine[-2:]]

    async def both():
        return await recorded() == ["host_removed", "removed"]

    await wait_until(both, what="host_removed, then Disconnected(removed)")


@on_both_stores
async def test_directory_rebuild_cli_restores_a_damaged_projection(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    good = await wait_status(relay, host["id"], lambda s: s["online"], what="online")
    client = await cluster.store()
    try:
        await client.hdel(cluster.keys.presence(), host["id"])
        assert not (await status(relay, host["id"]))["online"]

        async def cli(*args):
            proc = await asyncio.create_subprocess_exec(
                RELAY,
                "directory",
                "rebuild",
                "--server",
                relay.url,
                *args,
                env=cluster.env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            return json.loads(out)

        dry = await cli("--dry-run")
        assert dry["dry_run"] and dry["added"] == 1 and dry["changes"][0]["host_id"] == host["id"]
        assert not (await status(relay, host["id"]))["online"]
        report = await cli()
        assert report["complete"] and report["added"] == 1 and report["events"] >= 3
        assert await status(relay, host["id"]) == good
        assert (await cli())["added"] == 0
    finally:
        await client.aclose()


async def test_a_drained_machine_reports_drain_and_the_host_comes_online_elsewhere(
    cluster, upstream
):
    relays = [await cluster.relay(machine_id=f"d{i}") for i in range(2)]
    edge = await cluster.edge(relays)
    host = await relays[0].add_host("drain")
    cluster.agent(edge.url, host["token"], upstream.url)
    s = await wait_status(relays[0], host["id"], lambda s: s["online"], what="online")
    holder = next(r for r in relays if r.machine_id == s["machine_id"])
    survivor = next(r for r in relays if r is not holder)
    holder.proc.signal(signal.SIGTERM)
    assert await holder.proc.wait_exit(15) == 0
    moved = await wait_status(
        survivor,
        host["id"],
        lambda s: (
            s["online"]
            and s["machine_id"] == survivor.machine_id
            and s["disconnect_reason"] == "drain"
        ),
        what="drained away and online on the survivor",
    )
    assert moved["epoch"] > s["epoch"]
    page = await events(survivor, limit=1000)
    mine = [e for e in page["events"] if e.get("machine_id") == holder.machine_id]
    kinds = [e["kind"] for e in mine]
    assert kinds[0] == "machine_started" and kinds[-1] == "machine_stopped"
    assert "machine_draining" in kinds
    drained = [e for e in mine if e["kind"] == "disconnected"]
    assert [e["reason"] for e in drained] == ["drain"]
