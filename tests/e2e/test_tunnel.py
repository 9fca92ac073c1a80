"""End-to-end: `relay serve` + `relay agent` + a local upstream, over loopback sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time

import aiohttp
import httpx
import msgspec
import pytest

from relay.wire.protocol import PROTOCOL_VERSION, FrameCodec, Hello, Limits, Ping, Welcome
from tests.e2e.harness import ADMIN_TOKEN, METRICS_TOKEN, on_both_stores, wait_until
from tests.e2e.upstream import pattern_bytes

pytestmark = pytest.mark.e2e


async def connected(cluster, upstream, slug=None, *agent_args):
    relay = await cluster.relay()
    host = await relay.add_host("web", slug)
    agent = cluster.agent(relay, host["token"], upstream.url, *agent_args)
    await relay.wait_online(host["slug"])
    return relay, host, agent


@on_both_stores
async def test_get_reaches_the_local_service(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    async with relay.client(host["slug"]) as c:
        r = await c.get("/hello")
    assert r.status_code == 200
    assert r.text == "hello from upstream"
    assert host["url"] == f"http://{host['slug']}.localhost:{relay.port}/"


async def test_forwarding_headers_are_set_by_the_relay_and_hop_by_hop_dropped(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    async with relay.client(host["slug"]) as c:
        r = await c.get(
            "/headers?x=1",
            headers={
                "X-Forwarded-For": "6.6.6.6",
                "X-Relay-Route": "spoof",
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
                "Keep-Alive": "timeout=5",
                "X-Custom": "kept",
            },
        )
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert r.json()["path"] == "/headers?x=1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"{host['slug']}.localhost:{relay.port}"
    assert seen["x-custom"] == "kept"
    for dropped in ("x-relay-route", "x-drop-me", "keep-alive"):
        assert dropped not in seen


async def test_20mb_upload_is_echoed_back_intact(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    body = os.urandom(20 * 1024 * 1024)
    expected = hashlib.sha256(body).hexdigest()

    async def chunks():
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    # A full-duplex client: the echo streams back while the upload is still going, and
    # nothing in between buffers a whole body, so a client that sent everything before
    # reading (httpx) could stall once the socket buffers are full.
    got = hashlib.sha256()
    headers = {"Host": f"{host['slug']}.localhost:{relay.port}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.post(f"{relay.url}/echo", data=chunks(), headers=headers) as r,
    ):
        assert r.status == 200
        async for piece in r.content.iter_any():
            got.update(piece)
    assert got.hexdigest() == expected
    # And a sized upload, checked by the upstream itself.
    async with relay.client(host["slug"], timeout=120) as c:
        r = await c.post("/digest", content=body)
    assert r.json() == {"sha256": expected, "size": len(body)}


async def test_50mb_download_streams_with_bounded_relay_memory(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    size = 50 * 1024 * 1024
    async with relay.client(host["slug"]) as c:
        await c.get("/download", params={"size": 1024 * 1024})  # warm up allocations
    baseline = relay.proc.rss_kib("VmHWM")  # peaks: see test_hostile.py's memory tests
    got = hashlib.sha256()
    received = 0
    async with relay.client(host["slug"], timeout=120) as c:
        async with c.stream("GET", "/download", params={"size": size}) as r:
            assert r.headers["content-length"] == str(size)
            async for piece in r.aiter_bytes():
                got.update(piece)
                received += len(piece)
    peak = relay.proc.rss_kib("VmHWM")
    assert received == size
    assert got.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()
    # The window bounds what the relay holds per stream (256 KiB); allow generous slack
    # for allocator noise, far below the 50 MB a buffering relay would need.
    assert peak - baseline < 20 * 1024, f"relay RSS grew {peak - baseline} KiB"


async def test_sse_first_event_arrives_before_the_last_is_produced(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    async with relay.client(host["slug"]) as c:
        async with c.stream("GET", "/sse") as r:
            assert r.headers["content-type"] == "text/event-stream"
            lines = r.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 10)
            assert first == "data: first"
            assert not upstream.state.sse_last_sent
            upstream.state.sse_release.set()
            rest = [line async for line in lines]
    assert "data: last" in rest


async def test_100_concurrent_requests_over_one_tunnel(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    limits = httpx.Limits(max_connections=100)
    async with relay.client(host["slug"], limits=limits) as c:
        results = await asyncio.gather(
            *(c.get("/delay", params={"id": str(i), "s": "0.3"}) for i in range(100))
        )
    assert [r.status_code for r in results] == [200] * 100
    assert [r.text for r in results] == [str(i) for i in range(100)]
    assert upstream.state.peak_concurrent >= 50  # they really ran side by side


async def test_client_disconnect_cancels_the_upstream_request(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(f"GET /slow HTTP/1.1\r\nHost: {host['slug']}.localhost\r\n\r\n".encode())
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"tick"), 10)
    writer.transport.abort()
    await asyncio.wait_for(upstream.state.slow_cancelled.wait(), 10)


@on_both_stores
async def test_an_overdue_response_head_is_504_and_the_upstream_call_is_cancelled(
    cluster, upstream
):
    relay = await cluster.relay("--request-timeout", "0.5")
    host = await relay.add_host("late")
    cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    async with relay.client(host["slug"]) as c:
        t0 = time.monotonic()
        r = await c.get("/delay?s=30")
        took = time.monotonic() - t0
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert 0.5 <= took < 5  # due at 0.5 s, swept every 0.125 s; the upstream takes 30
        # The stream's reset reached the agent, which dropped its upstream call.
        await wait_until(lambda: upstream.state.concurrent == 0, what="upstream call cancelled")
        assert (await c.get("/hello")).status_code == 200  # the host serves on


async def test_websocket_echo_text_binary_and_close_codes(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    headers = {"Host": f"{host['slug']}.localhost:{relay.port}"}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{relay.url}/ws", headers=headers, protocols=("chat",)) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hi")
            assert (await ws.receive(timeout=5)).data == "echo:hi"
            await ws.send_bytes(b"\x00\x01\xff")
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.BINARY
            assert msg.data == b"echo:\x00\x01\xff"
            await ws.ping(b"p")  # answered by the relay's side, the socket stays healthy
            await ws.send_str("again")
            assert (await ws.receive(timeout=5)).data == "echo:again"
            await ws.send_str("close:4321")
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 4321
        # The client closing with its own code reaches the upstream.
        async with s.ws_connect(f"{relay.url}/ws", headers=headers) as ws:
            await ws.send_str("x")
            await ws.receive(timeout=5)
            await ws.close(code=4444, message=b"client done")
    await wait_until(
        lambda: 4444 in upstream.state.ws_client_close_codes, what="client close code upstream"
    )


async def test_refused_websocket_upgrade_passes_the_upstream_answer(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    headers = {"Host": f"{host['slug']}.localhost:{relay.port}"}
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(f"{relay.url}/ws-refuse", headers=headers)
    assert info.value.status == 403


@on_both_stores
async def test_second_agent_replaces_the_first_without_flapping(cluster, upstream):
    relay, host, first = await connected(cluster, upstream)
    epoch_before = (await relay.host(host["id"]))["epoch"]
    second = cluster.agent(relay, host["token"], upstream.url, name="second")
    await wait_until(lambda: '"agent.replaced"' in first.log(), what="first agent replaced (4002)")
    epoch_after = (await relay.host(host["id"]))["epoch"]
    assert epoch_after > epoch_before
    # The first agent keeps trying as a standby; it must never take the host back.
    await wait_until(
        lambda: first.log().count('"agent.reconnecting"') >= 4,
        timeout=20,
        what="first agent retrying as a standby",
    )
    assert (await relay.host(host["id"]))["epoch"] == epoch_after
    assert second.log().count('"agent.connected"') == 1
    async with relay.client(host["slug"]) as c:
        assert (await c.get("/hello")).status_code == 200
    # When the holder leaves, the standby takes over.
    second.signal(signal.SIGTERM)
    assert await second.wait_exit() == 0
    await wait_until(
        lambda: first.log().count('"agent.connected"') >= 2, timeout=20, what="standby takes over"
    )
    await relay.wait_online(host["slug"])


async def test_bad_token_is_refused_and_the_agent_exits_nonzero(cluster, upstream):
    relay = await cluster.relay()
    agent = cluster.agent(relay, "not-a-real-token", upstream.url)
    assert await agent.wait_exit(15) == 3
    assert "token" in agent.log() and "refused" in agent.log()


@on_both_stores
async def test_removed_host_closes_its_tunnel_4003_and_stops_the_agent(cluster, upstream):
    relay, host, agent = await connected(cluster, upstream)
    async with relay.api() as api:
        assert (await api.delete(f"/api/hosts/{host['id']}")).status_code == 204
        assert (await api.get(f"/api/hosts/{host['id']}")).status_code == 404
    assert await agent.wait_exit(15) == 3
    async with relay.client(host["slug"]) as c:
        assert (await c.get("/")).status_code == 404
    # The slug is free again.
    again = await relay.add_host("again", host["slug"])
    assert again["slug"] == host["slug"]


async def test_garbage_frames_close_that_tunnel_4004_while_another_host_serves(cluster, upstream):
    relay, good, _ = await connected(cluster, upstream)
    bad = await relay.add_host("bad")
    codec = FrameCodec()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(
            f"ws://127.0.0.1:{relay.port}/tunnel",
            headers={"Authorization": f"Bearer {bad['token']}"},
        ) as ws:
            await ws.send_bytes(codec.message(Hello(PROTOCOL_VERSION, "test", Limits())))
            (welcome,) = codec.decode((await ws.receive(timeout=5)).data)
            assert isinstance(welcome, Welcome)
            await ws.send_bytes(b"\xc1\xff garbage")
            msg = await ws.receive(timeout=5)
            while msg.type is aiohttp.WSMsgType.BINARY:  # the relay's first Ping only
                assert all(isinstance(f, Ping) for f in codec.decode(msg.data)), msg.data
                msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 4004
    async with relay.client(good["slug"]) as c:
        assert (await c.get("/hello")).status_code == 200
    assert await relay.metric("relay_protocol_errors_total") >= 1
    assert relay.proc.returncode() is None


async def test_unknown_slug_is_404_and_offline_host_is_503_with_retry_after(cluster):
    relay = await cluster.relay()
    host = await relay.add_host("idle")
    async with relay.client("nosuchhost") as c:
        r = await c.get("/")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_host"
    async with relay.client(host["slug"]) as c:
        r = await c.get("/")
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert r.json()["error"]["code"] == "host_offline"


@on_both_stores
async def test_admin_api_contract(cluster):
    relay = await cluster.relay()
    async with httpx.AsyncClient(base_url=relay.url) as anon:
        assert (await anon.get("/api/hosts")).status_code == 401
        assert (
            await anon.get("/api/hosts", headers={"Authorization": "Bearer wrong"})
        ).status_code == 401
    async with relay.api() as api:
        r = await api.post("/api/hosts", json={"name": "site", "slug": "mysite01"})
        assert r.status_code == 201
        created = r.json()
        assert set(created) == {"id", "slug", "name", "url", "token"}
        assert (
            await api.post("/api/hosts", json={"name": "dup", "slug": "mysite01"})
        ).status_code == 409
        bad = await api.post("/api/hosts", json={"name": "x", "slug": "Not_A-Label!"})
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_slug"
        assert (await api.post("/api/hosts", content=b"{not json")).status_code == 422
        assert (await api.post("/api/hosts", json={"nom": "x"})).status_code == 422
        wrong_method = await api.put("/api/hosts", json={})
        assert wrong_method.status_code == 405
        assert set(wrong_method.headers["Allow"].split(", ")) >= {"GET", "POST"}
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        assert (await api.get("/api/nothing-here")).status_code == 404
        listed = (await api.get("/api/hosts")).json()
        assert [h["slug"] for h in listed] == ["mysite01"]
        shown = (await api.get("/api/hosts/mysite01")).json()
        assert "token" not in shown
        for key in (
            "id",
            "slug",
            "name",
            "url",
            "online",
            "machine_id",
            "epoch",
            "last_connected_at",
            "last_disconnected_at",
            "disconnect_reason",
            "agent_version",
            "remote_addr",
            "dns",
        ):
            assert key in shown
        assert shown["online"] is False
        assert set(shown["dns"]) == {"state", "records", "last_error", "last_error_at"}
        assert (await api.get("/api/hosts/nothere")).status_code == 404


async def test_health_ready_and_metrics(cluster, upstream):
    relay, host, _ = await connected(cluster, upstream)
    async with relay.client(host["slug"]) as c:
        for _ in range(3):
            await c.get("/hello")
    async with httpx.AsyncClient(base_url=relay.url) as c:
        health = await c.get("/healthz")
        assert health.status_code == 200
        assert health.json()["store"] == "ok"
        assert (await c.get("/readyz")).status_code == 200
        # On the public listener metrics need the token: behind a proxy every peer
        # address is the proxy's.
        assert (await c.get("/metrics")).status_code == 403
        text = (await c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
    assert "relay_tunnels_current" in text
    assert "relay_store_up 1" in text
    assert "relay_request_duration_seconds_bucket" in text
    assert await relay.metric("relay_requests_total", status="200") >= 3
    assert await relay.metric("relay_tunnels_current") == 1
    # The relay pings a new tunnel at once: its round trip is counted by the time it is used.
    assert await relay.metric("relay_tunnel_rtt_seconds_count") >= 1
    assert await relay.metric("relay_tunnel_rtt_seconds_bucket", le="+Inf") >= 1
    assert 0 < await relay.metric("relay_tunnel_rtt_seconds_sum") < 5


async def test_hosts_cli_prints_json_with_the_token_once(cluster):
    relay = await cluster.relay()
    env = cluster.env()
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(__import__("sys").executable), "relay"),
        "hosts",
        "add",
        "cli-host",
        "--slug",
        "clihost1",
        "--server",
        relay.url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    created = json.loads(out)
    assert created["slug"] == "clihost1" and created["token"]
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(__import__("sys").executable), "relay"),
        "hosts",
        "show",
        "clihost1",
        "--server",
        relay.url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "token" not in json.loads(out)
    assert ADMIN_TOKEN not in out.decode()


def test_codec_is_msgpack():
    assert msgspec.msgpack.decode(FrameCodec().message(Hello(1, "a", Limits())))[0][0] == 1


async def test_a_get_whose_agent_dies_goes_out_again_on_the_next_tunnel(cluster, upstream):
    # An agent restarting must not cost the GETs it had in flight: the relay sends such a
    # request (idempotent, bodiless, no answer yet) once more on the host's next tunnel.
    relay = await cluster.relay()
    host = await relay.add_host("retry")
    first = cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    async with relay.client(host["slug"]) as c:
        pending = asyncio.ensure_future(c.get("/delay", params={"s": "1", "id": "again"}))
        await wait_until(lambda: upstream.state.concurrent == 1, what="request upstream")
        first.signal(signal.SIGKILL)
        cluster.agent(relay, host["token"], upstream.url)
        answer = await pending
        assert answer.status_code == 200
        assert answer.text == "again"
    assert await relay.metric("relay_proxy_errors_total", reason="sent_again") == 1
