"""End-to-end fleet behaviour: several `relay serve` machines behind `relay edge`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import aiohttp
import httpx
import pytest

from tests.e2e.harness import on_both_stores, wait_until
from tests.e2e.tcpproxy import BlackholeProxy

pytestmark = pytest.mark.e2e


async def fleet(cluster, n=3, *args):
    relays = [await cluster.relay(*args, machine_id=f"m{i}") for i in range(n)]
    return relays, await cluster.edge(relays)


async def total(relays, metric, **labels):
    return sum([await r.metric(metric, **labels) for r in relays])


async def test_requests_through_the_edge_reach_a_host_on_another_machine(cluster, upstream):
    relays, edge = await fleet(cluster)
    host = await relays[0].add_host("web")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])
    async with edge.client(host["slug"]) as c:
        results = await asyncio.gather(*(c.get("/hello") for _ in range(200)))
    assert [r.status_code for r in results] == [200] * 200
    assert all(r.text == "hello from upstream" for r in results)
    # Two of three machines do not hold the tunnel: they answered with fly-replay.
    assert await total(relays[1:], "relay_replay_total") > 0
    assert await relays[0].metric("relay_replay_total") == 0


async def test_websocket_through_the_edge_to_a_host_on_another_machine(cluster, upstream):
    relays, edge = await fleet(cluster)
    host = await relays[0].add_host("ws")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])
    headers = {"Host": f"{host['slug']}.localhost", "fly-force-instance-id": "m1"}
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{edge.url}/ws", headers=headers) as ws:
        await ws.send_str("across")
        assert (await ws.receive(timeout=5)).data == "echo:across"
        await ws.send_bytes(b"\x01\x02")
        assert (await ws.receive(timeout=5)).data == b"echo:\x01\x02"
    # m1 forwarded the upgrade over the private network instead of replaying it.
    assert await relays[1].metric("relay_forward_total") >= 1


async def test_5mb_post_to_a_host_on_another_machine_takes_the_forward_path(cluster, upstream):
    relays, edge = await fleet(cluster)
    host = await relays[0].add_host("big")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])
    body = os.urandom(5 * 1024 * 1024)
    async with httpx.AsyncClient(base_url=edge.url, timeout=60) as c:
        r = await c.post(
            "/digest",
            content=body,
            headers={"Host": f"{host['slug']}.localhost", "fly-force-instance-id": "m2"},
        )
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    assert await relays[2].metric("relay_forward_total") >= 1
    assert await relays[2].metric("relay_replay_total") == 0


@on_both_stores
async def test_a_replayed_request_is_never_replayed_again(cluster, upstream):
    relays, _ = await fleet(cluster, 2)
    host = await relays[0].add_host("loop")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])
    async with relays[1].client(host["slug"]) as c:
        first = await c.get("/hello")
        again = await c.get("/hello", headers={"fly-replay-src": "instance=m0;region=local;state="})
    assert first.status_code == 409
    assert first.headers["fly-replay"] == "instance=m0"
    assert again.status_code == 503
    assert "fly-replay" not in again.headers
    # A forged machine-to-machine hop without the cluster secret is just a client request.
    async with relays[1].client(host["slug"]) as c:
        forged = await c.get("/hello", headers={"X-Relay-Hop": "m9", "X-Relay-Auth": "guess"})
    assert forged.status_code == 409


async def test_forward_mode_carries_everything_over_the_private_network(cluster, upstream):
    relays, _ = await fleet(cluster, 2, "--route-mode", "forward")
    host = await relays[0].add_host("fwd")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])
    async with relays[1].client(host["slug"]) as c:
        r = await c.get("/headers?q=a%2Fb%2e%7e%20")
    assert r.status_code == 200
    assert r.json()["raw"] == "/headers?q=a%2Fb%2e%7e%20"  # byte for byte, as via the owner
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert not any(k.startswith("x-relay-") for k in seen)
    assert await relays[1].metric("relay_forward_total") >= 1


async def test_machines_api_lists_every_live_machine(cluster):
    relays, _ = await fleet(cluster, 2)
    async with relays[0].api() as api:
        machines = (await api.get("/api/machines")).json()
    assert {m["machine_id"] for m in machines} == {"m0", "m1"}
    for m in machines:
        assert set(m) >= {"machine_id", "address", "state", "tunnels", "last_seen"}
        assert m["state"] == "running"
        assert m["address"].startswith("http://127.0.0.1:")


async def steady_load(client: httpx.AsyncClient, stop: asyncio.Event, results: list[int]) -> None:
    while not stop.is_set():
        try:
            r = await client.get("/delay", params={"s": "0.05"})
            results.append(r.status_code)
        except httpx.HTTPError as exc:
            results.append(-1)
            print("load error:", repr(exc))


async def test_sigterm_under_load_loses_no_request_and_moves_the_agent(cluster, upstream):
    relays, edge = await fleet(cluster, 3, "--drain-timeout", "5")
    host = await relays[0].add_host("drain")
    # The agent dials through the edge, as on Fly, so its reconnect lands on a live machine.
    agent = cluster.agent(edge.url, host["token"], upstream.url)
    await wait_until(lambda: '"agent.connected"' in agent.log(), what="agent connected")
    holder_id = (await relays[0].host(host["id"]))["machine_id"]
    holder = next(r for r in relays if r.machine_id == holder_id)
    stop = asyncio.Event()
    results: list[int] = []
    async with edge.client(host["slug"], limits=httpx.Limits(max_connections=20)) as c:
        workers = [asyncio.create_task(steady_load(c, stop, results)) for _ in range(10)]
        await wait_until(lambda: len(results) > 50, what="load running")
        holder.proc.signal(signal.SIGTERM)
        assert await holder.proc.wait_exit(10) == 0
        before = len(results)
        await wait_until(lambda: len(results) > before + 50, what="load continues after drain")
        stop.set()
        await asyncio.gather(*workers)
    assert results.count(200) == len(results), f"failed: {[r for r in results if r != 200][:10]}"
    survivor = next(r for r in relays if r is not holder)
    now = (await survivor.host(host["id"]))["machine_id"]
    assert now != holder_id
    assert '"relay.drained"' in holder.proc.log()


async def test_a_draining_machine_still_serves_a_late_replay_after_its_agent_moved(
    cluster, upstream
):
    # Another machine read the owner record just before the agent's new claim and sent
    # the client here with fly-replay; the request may not hop again, so the drained
    # machine's old tunnel must still be there for it.
    relays, edge = await fleet(cluster, 2, "--drain-timeout", "5")
    host = await relays[0].add_host("late")
    agent = cluster.agent(edge.url, host["token"], upstream.url)
    await wait_until(lambda: '"agent.connected"' in agent.log(), what="agent connected")
    holder_id = (await relays[0].host(host["id"]))["machine_id"]
    holder = next(r for r in relays if r.machine_id == holder_id)
    holder.proc.signal(signal.SIGTERM)
    await wait_until(
        lambda: '"tunnel.moved"' in holder.proc.log(), interval=0.005, what="agent moved"
    )
    async with holder.client(host["slug"]) as c:
        late = await c.get("/hello", headers={"fly-replay-src": "instance=e;region=local;state="})
    assert late.status_code == 200, late.text
    assert await holder.proc.wait_exit(10) == 0
    assert '"relay.drain_lingered"' in holder.proc.log()


@on_both_stores
async def test_sigkill_a_machine_agents_reconnect_elsewhere_and_owner_keys_expire(
    cluster, upstream
):
    relays, edge = await fleet(cluster, 2)
    host = await relays[0].add_host("crash")
    agent = cluster.agent(edge.url, host["token"], upstream.url)
    await wait_until(lambda: '"agent.connected"' in agent.log(), what="agent connected")
    holder_id = (await relays[0].host(host["id"]))["machine_id"]
    holder = next(r for r in relays if r.machine_id == holder_id)
    survivor = next(r for r in relays if r is not holder)
    holder.proc.signal(signal.SIGKILL)

    async def served_elsewhere() -> bool:
        async with edge.client(host["slug"]) as c:
            r = await c.get("/hello")
        return r.status_code == 200

    await wait_until(served_elsewhere, timeout=20, what="host served by the survivor")
    assert (await survivor.host(host["id"]))["machine_id"] == survivor.machine_id
    client = await cluster.store()
    try:

        async def no_keys_of_the_dead() -> bool:
            # SCAN walks every primary of a cluster; one GET per string key (no MGET:
            # in a cluster the keys lie in many slots).
            keys = [k async for k in client.scan_iter(cluster.keys.pattern(), _type="string")]
            values = [v for v in [await client.get(k) for k in keys] if v]
            return not any(
                holder_id.encode() in v for v in values if b'"owner"' in v or b'"machine"' in v
            )

        await wait_until(no_keys_of_the_dead, timeout=10, what="dead machine's keys expired")
    finally:
        await client.aclose()


async def test_blackholed_peer_is_noticed_by_both_sides(cluster, upstream):
    relay = await cluster.relay()
    proxy = await BlackholeProxy(relay.port).start()
    try:
        host = await relay.add_host("hole")
        agent = cluster.agent(proxy.url, host["token"], upstream.url)
        await relay.wait_online(host["slug"])
        proxy.blackhole()
        # Agent: 2 s silence timeout; relay: 0.5 s pings x 3 misses.
        await wait_until(
            lambda: '"agent.relay_silent"' in agent.log(), timeout=8, what="agent notices"
        )
        await wait_until(
            lambda: '"tunnel.missed_pongs"' in relay.proc.log(), timeout=8, what="relay notices"
        )
        await wait_until(
            lambda: '"close_code": 4008' in relay.proc.log(), timeout=8, what="closed 4008"
        )
        async with relay.client(host["slug"]) as c:
            assert (await c.get("/hello")).status_code == 503
    finally:
        await proxy.stop()


async def test_forwarding_between_machines_over_ipv6_carries_websockets_and_big_bodies(
    cluster, upstream
):
    # As on Fly: machines listen dual stack and reach each other at their IPv6 address.
    relays = [
        await cluster.relay("--route-mode", "forward", machine_id=f"v{i}", ipv6=True)
        for i in range(2)
    ]
    host = await relays[0].add_host("six")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])
    body = os.urandom(5 * 1024 * 1024)
    async with relays[1].client(host["slug"], timeout=60) as c:  # v1 holds nothing
        r = await c.post("/digest", content=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    headers = {"Host": f"{host['slug']}.localhost"}
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{relays[1].url}/ws", headers=headers) as ws,
    ):
        await ws.send_str("over six")
        assert (await ws.receive(timeout=5)).data == "echo:over six"
    assert await relays[1].metric("relay_forward_total") >= 2


async def raw_exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Send ``requests`` one by one on ONE connection; each response head (and body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            answers.append(head + await reader.readexactly(length))
    finally:
        writer.close()
    return answers


async def test_misrouted_bodiless_requests_are_answered_on_a_kept_alive_connection(
    cluster, upstream
):
    # Fly's proxy sends most requests of a fleet to a machine without the tunnel: the
    # replay (and 404/503) must not cost a new connection each.
    relays, _ = await fleet(cluster, 2)
    host = await relays[0].add_host("kept")
    offline = await relays[0].add_host("offline")
    cluster.agent(relays[0], host["token"], upstream.url)
    await relays[0].wait_online(host["slug"])

    def get(slug: str) -> bytes:
        return f"GET /hello HTTP/1.1\r\nHost: {slug}.localhost\r\n\r\n".encode()

    before = await relays[1].metric("relay_replay_total")
    answers = await raw_exchange(
        relays[1].port,
        [get(host["slug"]), get(host["slug"]), get("nosuchhost"), get(offline["slug"])],
    )
    replay, again, unknown, gone = answers
    for answer in (replay, again):
        assert answer.startswith(b"HTTP/1.1 409 ")
        assert b"fly-replay: instance=m0\r\n" in answer
        assert b"Connection: close" not in answer
    assert unknown.startswith(b"HTTP/1.1 404 ")
    assert b'"code":"unknown_host"' in unknown
    assert b"X-Request-Id: " in unknown
    assert gone.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 5\r\n" in gone
    assert await relays[1].metric("relay_replay_total") == before + 2
    # The owner serves the same request itself, on the same kind of connection.
    (served,) = await raw_exchange(relays[0].port, [get(host["slug"])])
    assert served.startswith(b"HTTP/1.1 200 ")
    # m1 remembers the slug for 2 s; a host removed on m0 is unknown there well before
    # (once m0 released its owner key, m1 reads the slug again instead of saying 503).
    async with relays[0].api() as api:
        assert (await api.delete(f"/api/hosts/{host['id']}")).status_code == 204

    async def unknown_on_m1() -> bool:
        (answer,) = await raw_exchange(relays[1].port, [get(host["slug"])])
        assert not answer.startswith(b"HTTP/1.1 503 "), answer
        return answer.startswith(b"HTTP/1.1 404 ")

    await wait_until(unknown_on_m1, timeout=1.5, what="404 for the removed host on m1")
