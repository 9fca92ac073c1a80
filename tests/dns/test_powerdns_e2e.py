"""End-to-end: `relay serve` in managed mode against a real PowerDNS Authoritative server.

Records are checked where it matters: in the server's API and over DNS itself (dnspython
asking the server on its loopback port). "No write" is checked on both sides: the relay's
``relay_dns_write_total`` and the zone's serial, which PowerDNS bumps on every change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from directory.dns.state import DnsKeys
from directory.keys import Keys
from directory.store import connect
from relay.wire.protocol import PROTOCOL_VERSION, FrameCodec, Hello, Limits, Welcome
from tests.dns.conftest import TEST_ZONE, ZONE
from tests.e2e.harness import ADMIN_TOKEN, wait_until

pytestmark = pytest.mark.e2e

RELAY = str(Path(sys.executable).with_name("relay"))
TARGET = "relay.example.net"


async def managed_relay(cluster, pdns, *extra):
    return await cluster.relay(
        "--base-domain", ZONE,
        "--dns-mode", "managed",
        "--dns-provider", "powerdns",
        "--pdns-api-url", pdns.api_url,
        "--dns-target", TARGET,
        "--dns-ttl", "60",
        "--dns-orphan-grace", "0",
        *extra,
        PDNS_API_KEY=pdns.api_key,
    )  # fmt: skip


def relay_cli(env, *args):
    return subprocess.run(
        [RELAY, *args], env=env, check=False, capture_output=True, text=True, timeout=30
    )


async def dns_state(relay, host_id):
    return (await relay.host(host_id))["dns"]


async def wait_dns_ok(relay, host_id, records=1):
    async def ok():
        dns = await dns_state(relay, host_id)
        return dns if dns["state"] == "ok" and len(dns["records"]) == records else None

    return await wait_until(ok, timeout=10, what=f"dns ok for {host_id}")


def our_names(pdns):
    return sorted(r["name"].rstrip(".") for r in pdns.rrsets(ZONE))


async def test_a_managed_hosts_record_appears_and_resolves(cluster, pdns_zone):
    relay = await managed_relay(cluster, pdns_zone)
    host = await relay.add_host("web")
    fqdn = f"{host['slug']}.{ZONE}"
    dns = await wait_dns_ok(relay, host["id"])
    assert dns["records"] == [f"{fqdn} CNAME {TARGET}"]
    assert dns["last_error"] is None
    assert pdns_zone.resolve(fqdn, "CNAME") == [TARGET]
    (rrset,) = pdns_zone.rrsets(ZONE)
    assert rrset["comments"][0]["content"].startswith("relay-directory:")
    assert await relay.metric("relay_dns_write_total", op="create", status="ok") == 1


async def reconnect(relay, token):
    codec = FrameCodec()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"ws://127.0.0.1:{relay.port}/tunnel", headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await ws.send_bytes(codec.message(Hello(PROTOCOL_VERSION, "dns-test", Limits())))
            (welcome,) = codec.decode((await ws.receive(timeout=5)).data)
            assert isinstance(welcome, Welcome)


async def test_a_hundred_reconnects_of_a_live_host_make_zero_api_writes(
    cluster, pdns_zone, dns_valkey
):
    relay = await managed_relay(cluster, pdns_zone)
    host = await relay.add_host("web")
    await wait_dns_ok(relay, host["id"])
    writes = await relay.metric("relay_dns_write_total")
    reads = await relay.metric("relay_dns_list_total")
    serial = pdns_zone.serial(ZONE)
    for _ in range(100):
        await reconnect(relay, host["token"])
    redis = await connect(dns_valkey)
    keys = Keys(cluster.prefix)
    try:

        async def settled():
            groups = {g["name"].decode(): g for g in await redis.xinfo_groups(keys.events())}
            dns = groups.get("dns")
            if dns is None or dns["pending"] or dns.get("lag"):
                return False
            busy = await redis.keys(DnsKeys(keys).lock("*"))
            return not busy and await redis.scard(DnsKeys(keys).dirty()) == 0

        await wait_until(settled, timeout=15, what="the dns consumer caught up")
        connected = [e for e in await redis.xrange(keys.events()) if e[1][b"k"] == b"connected"]
        assert len(connected) >= 100
    finally:
        await redis.aclose()
    assert await relay.metric("relay_dns_write_total") == writes
    assert await relay.metric("relay_dns_list_total") == reads  # not even a read
    assert pdns_zone.serial(ZONE) == serial
    assert (await dns_state(relay, host["id"]))["state"] == "ok"


async def test_removing_the_host_deletes_its_record(cluster, pdns_zone):
    relay = await managed_relay(cluster, pdns_zone)
    host = await relay.add_host("web")
    await wait_dns_ok(relay, host["id"])
    async with relay.api() as api:
        assert (await api.delete(f"/api/hosts/{host['id']}")).status_code == 204
    await wait_until(lambda: our_names(pdns_zone) == [], timeout=10, what="the record deleted")
    assert pdns_zone.resolve(f"{host['slug']}.{ZONE}", "CNAME") == []
    assert await relay.metric("relay_dns_write_total", op="delete", status="ok") == 1


async def test_foreign_records_survive_every_sync_and_hand_deletes_are_repaired(cluster, pdns_zone):
    relay = await managed_relay(cluster, pdns_zone)
    host = await relay.add_host("web")
    fqdn = f"{host['slug']}.{ZONE}"
    await wait_dns_ok(relay, host["id"])
    pdns_zone.patch(ZONE, [
        {"name": f"www.{ZONE}.", "type": "A", "ttl": 60, "changetype": "REPLACE", "records": [{"content": "192.0.2.80", "disabled": False}]},
        {"name": f"mail.{ZONE}.", "type": "CNAME", "ttl": 60, "changetype": "REPLACE", "records": [{"content": "mx.example.org.", "disabled": False}], "comments": [{"content": "hand made", "account": "ops"}]},
    ])  # fmt: skip
    foreign = sorted(n for n in our_names(pdns_zone) if n != fqdn)
    async with relay.api() as api:
        for _ in range(3):
            report = (await api.post("/api/dns/sync")).json()
            assert report["deleted"] == 0 and report["errors"] == 0
            assert report["already_synced"] == 1
        # Someone deletes our record by hand; the next sync puts it back.
        pdns_zone.patch(ZONE, [{"name": f"{fqdn}.", "type": "CNAME", "changetype": "DELETE"}])
        assert pdns_zone.resolve(fqdn, "CNAME") == []
        report = (await api.post("/api/dns/sync")).json()
        assert (report["created"], report["deleted"], report["errors"]) == (1, 0, 0)
        records = (await api.get("/api/dns/records")).json()["records"]
        # Deleting by name: never someone else's record, never one a host still wants.
        assert (await api.delete(f"/api/dns/records/www.{ZONE}")).status_code == 409
        assert (await api.delete(f"/api/dns/records/{fqdn}")).status_code == 409
        missing = await api.delete(f"/api/dns/records/nothing.{ZONE}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "dns_record_not_found"
    assert pdns_zone.resolve(fqdn, "CNAME") == [TARGET]
    assert sorted(n for n in our_names(pdns_zone) if n != fqdn) == foreign
    assert pdns_zone.resolve(f"www.{ZONE}", "A") == ["192.0.2.80"]
    assert {(r["name"], r["ours"]) for r in records if r["type"] != "SOA"} == {
        (fqdn, True),
        (f"www.{ZONE}", False),
        (f"mail.{ZONE}", False),
    }


async def test_a_dry_run_from_the_cli_reports_and_changes_nothing(cluster, pdns_zone):
    relay = await managed_relay(cluster, pdns_zone)
    host = await relay.add_host("web")
    await wait_dns_ok(relay, host["id"])
    # An orphan of ours (a host that no longer exists) and a hand-deleted record.
    marker = pdns_zone.rrsets(ZONE)[0]["comments"][0]["content"]
    pdns_zone.patch(ZONE, [
        {"name": f"{host['slug']}.{ZONE}.", "type": "CNAME", "changetype": "DELETE"},
        {"name": f"orphan.{ZONE}.", "type": "CNAME", "ttl": 60, "changetype": "REPLACE", "records": [{"content": f"{TARGET}.", "disabled": False}], "comments": [{"content": marker, "account": "relay-directory"}]},
    ])  # fmt: skip
    serial = pdns_zone.serial(ZONE)
    env = dict(os.environ, RELAY_ADMIN_TOKEN=ADMIN_TOKEN)
    out = subprocess.run(
        [RELAY, "dns", "sync", "--dry-run", "--server", relay.url],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dry_run"] is True
    assert (report["created"], report["deleted"], report["errors"]) == (1, 1, 0)
    assert pdns_zone.serial(ZONE) == serial
    assert our_names(pdns_zone) == [f"orphan.{ZONE}"]
    out = relay_cli(env, "dns", "rm", f"orphan.{ZONE}", "--server", relay.url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"deleted": [f"orphan.{ZONE} CNAME {TARGET}"]}
    out = subprocess.run(
        [RELAY, "dns", "sync", "--server", relay.url],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["created"], report["deleted"]) == (1, 0)
    assert our_names(pdns_zone) == [f"{host['slug']}.{ZONE}"]


async def test_test_hosts_use_reserved_prefixes_and_live_in_the_test_zone(cluster, pdns_zone):
    relay = await managed_relay(cluster, pdns_zone, "--dns-test-zone", TEST_ZONE)
    async with relay.api() as api:
        refused = await api.post("/api/hosts", json={"name": "ci", "slug": "test-web"})
        assert refused.status_code == 422
        created = await api.post(
            "/api/hosts", json={"name": "ci", "slug": "test-web", "test": True}
        )
        assert created.status_code == 201, created.text
        host = created.json()
        taken = await api.post(
            "/api/hosts", json={"name": "other", "slug": "test-web", "test": True}
        )
        assert taken.status_code == 409  # one claim per slug for every kind of host
    dns = await wait_dns_ok(relay, host["id"])
    assert dns["records"] == [f"test-web.{TEST_ZONE} CNAME {TARGET}"]
    assert pdns_zone.resolve(f"test-web.{TEST_ZONE}", "CNAME") == [TARGET]
    assert our_names(pdns_zone) == []  # nothing in the production zone
