"""Contract details of DESIGN.md's Interfaces checked from outside, found by an audit."""

from __future__ import annotations

import json
import socket

import httpx

from tests.e2e.harness import ADMIN_TOKEN, wait_until

MANAGED = ("--dns-mode", "managed", "--dns-provider", "memory", "--dns-target", "relay.example.net")


async def test_a_dry_run_flag_the_relay_cannot_read_is_refused_not_run_for_real(cluster):
    """``?dry_run=1`` is a dry run; ``dry_run=ture`` (a typo) once ran a real sync and rebuild."""
    relay = await cluster.relay(*MANAGED)
    await relay.add_host("web", slug="dryrun01")
    async with relay.api() as api:
        for path in ("/api/dns/sync", "/api/directory/rebuild"):
            for word, dry in (("1", True), ("yes", True), ("0", False), ("off", False)):
                r = await api.post(f"{path}?dry_run={word}")
                assert r.status_code == 200, r.text
                assert r.json()["dry_run"] is dry
            refused = await api.post(f"{path}?dry_run=ture")
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["code"] == "invalid_dry_run"
            assert error["request_id"] == refused.headers["X-Request-Id"]
        assert (await api.post("/api/dns/sync")).json()["dry_run"] is False
    async with httpx.AsyncClient(base_url=relay.url) as anon:
        r = await anon.post("/api/dns/sync?dry_run=1", headers={"Authorization": "Bearer x"})
        assert r.status_code == 401 and ADMIN_TOKEN not in r.text


async def test_fly_private_ip_is_advertised_with_the_port_of_the_listen_flag(cluster):
    """FLY_PRIVATE_IP is read as Fly sets it: the routing address other machines use is that
    address and this relay's port. With --listen given as a flag it was port 8080 always."""
    relay = await cluster.relay(FLY_PRIVATE_IP="::1")
    async with relay.api() as api:
        machines = (await api.get("/api/machines")).json()
    assert [m["address"] for m in machines] == [f"http://[::1]:{relay.port}"]


async def test_a_client_that_names_json_first_gets_the_json_error(cluster):
    """Errors are JSON, or a small HTML page for browsers (``Accept: text/html``); a client
    preferring JSON over HTML got the page."""
    relay = await cluster.relay()
    await relay.add_host("off", slug="jsonfst1")
    for slug, status in (("jsonfst1", 503), ("nosuch99", 404)):
        async with relay.client(slug) as c:
            r = await c.get("/", headers={"Accept": "application/json, text/html;q=0.5"})
            assert r.status_code == status
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]["request_id"] == r.headers["X-Request-Id"]
            page = await c.get("/", headers={"Accept": "text/html,application/json;q=0.9"})
            assert page.headers["content-type"].startswith("text/html")


async def test_no_x_forwarded_header_of_the_client_reaches_the_upstream(cluster, upstream):
    """X-Forwarded-* are set by the relay, never trusted from the client: X-Forwarded-Port,
    -Prefix, -Server and the like passed through untouched."""
    relay = await cluster.relay()
    host = await relay.add_host("web", slug="xfwd0001")
    cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    spoofs = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Port": "6666",
        "X-Forwarded-Prefix": "/admin",
        "X-Forwarded-Server": "spoof",
        "X-Forwarded-Ssl": "on",
    }
    async with relay.client(host["slug"]) as c:
        seen = (await c.get("/headers", headers=spoofs)).json()["headers"]
    names = {k.lower() for k in seen}
    assert {n for n in names if n.startswith("x-forwarded-")} == {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert "6666" not in json.dumps(seen) and "spoof" not in json.dumps(seen)


async def test_the_answer_for_a_dead_local_service_carries_a_request_id_and_no_address(cluster):
    """Every error answer carries X-Request-Id and the error shape with request_id, and
    never an internal address. The agent's 502 for a service that does not answer had
    neither; for a WebSocket it named the exception and the service's address."""
    relay = await cluster.relay()
    host = await relay.add_host("dead", slug="deadsvc1")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cluster.agent(relay, host["token"], dead)

    async def online() -> bool:
        return (await relay.host(host["slug"]))["online"]

    await wait_until(online, what="agent connected")
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with relay.client(host["slug"]) as c:
        for headers in ({}, upgrade):
            r = await c.get("/ws", headers=headers)
            assert r.status_code == 502, r.text
            error = r.json()["error"]
            assert error["code"] == "upstream_unreachable"
            assert error["request_id"] == r.headers["X-Request-Id"]
            assert "127.0.0.1" not in r.text and "Error" not in r.text
