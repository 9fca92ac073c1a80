"""The Cloudflare provider against a local stand-in of API v4 that fails on demand."""

from __future__ import annotations

import time

import pytest

from directory.dns.cloudflare import CloudflareProvider
from tests.dns.cloudflare_standin import CloudflareStandIn
from tests.dns.conftest import ZONE
from tests.e2e.harness import wait_until

ZONE_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def standin():
    s = await CloudflareStandIn().start()
    yield s
    await s.stop()


@pytest.fixture
def cloudflare(standin):
    return CloudflareProvider(ZONE, zone_id=ZONE_ID, api_token=standin.token, api_base=standin.url)


async def test_a_500_and_a_429_are_retried_and_counted(dns_env, standin, cloudflare):
    svc = dns_env.service({ZONE: cloudflare}, attempts=4)
    host, _ = await dns_env.hosts.create("web")
    standin.fail(500, on="batch")
    standin.fail(429, on="batch", retry_after="1")
    started = time.monotonic()
    await svc.converger.converge([host.id])
    assert time.monotonic() - started >= 0.95  # Retry-After was honoured
    assert standin.calls["batch"] == 3
    m = dns_env.metrics
    assert m.write_errors[("create", "500")] == 1
    assert m.write_errors[("create", "429")] == 1
    assert m.writes[("create", "ok")] == 1
    (record,) = standin.zone(ZONE_ID).values()
    assert record["name"] == f"{host.slug}.{ZONE}" and record["comment"] == svc.settings.marker
    status = (await svc.statuses([host.id]))[host.id]
    assert status.state == "ok"
    assert "429" in status.last_error  # the last failure stays visible after recovery


async def test_a_malformed_answer_is_retried_and_an_auth_error_is_not(dns_env, standin, cloudflare):
    svc = dns_env.service({ZONE: cloudflare}, attempts=3)
    host, _ = await dns_env.hosts.create("web")
    standin.malformed(on="list")
    await svc.converger.converge([host.id])
    assert (await svc.statuses([host.id]))[host.id].state == "ok"
    standin.fail(401, on="batch", times=None)
    await dns_env.hosts.delete(host.id)
    await svc.converger.converge([host.id])
    assert dns_env.metrics.write_errors[("delete", "401")] == 1  # one attempt only
    assert len(standin.zone(ZONE_ID)) == 1


async def test_a_failing_list_makes_sync_skip_all_deletes(dns_env, standin, cloudflare):
    svc = dns_env.service({ZONE: cloudflare}, attempts=2)
    await dns_env.hosts.create("web")
    standin.add(
        ZONE_ID, f"orphan.{ZONE}", "CNAME", "relay.example.net", comment=svc.settings.marker, ttl=60
    )
    standin.fail(503, on="list", times=None)
    report = await svc.sync()
    assert report.errors == 1 and report.deleted == 0 and report.created == 0
    assert standin.calls["batch"] == 0
    assert [r["name"] for r in standin.zone(ZONE_ID).values()] == [f"orphan.{ZONE}"]
    standin.heal()
    report = await svc.sync()
    assert (report.created, report.deleted, report.errors) == (1, 1, 0)


@pytest.mark.e2e
async def test_a_persistent_failure_shows_on_the_host_within_a_second(cluster, standin):
    relay = await cluster.relay(
        "--base-domain", ZONE,
        "--dns-mode", "managed",
        "--dns-provider", "cloudflare",
        "--cloudflare-api-base", standin.url,
        "--dns-target", "192.0.2.7",
        CLOUDFLARE_API_TOKEN=standin.token,
        CLOUDFLARE_ZONE_ID=ZONE_ID,
    )  # fmt: skip
    standin.fail(500, on="batch", times=None)
    host = await relay.add_host("web")

    async def failed():
        dns = (await relay.host(host["id"]))["dns"]
        return dns if dns["state"] == "error" else None

    dns = await wait_until(failed, timeout=10, interval=0.01, what="dns.state=error")
    seen = time.time()
    assert seen - standin.failed_at[0] < 1.0
    assert "HTTP 500" in dns["last_error"]
    assert dns["last_error_at"].endswith("Z")
    assert await relay.metric("relay_dns_write_errors_total", op="create", http_status="500") >= 1
    assert '"event": "dns.write_failed"' in relay.proc.log()
    assert standin.token not in relay.proc.log()
    standin.heal()

    async def repaired():
        # The worker's own retries may get there first; a sync repairs it otherwise.
        async with relay.api() as api:
            await api.post("/api/dns/sync")
        dns = (await relay.host(host["id"]))["dns"]
        return dns if dns["state"] == "ok" else None

    dns = await wait_until(repaired, timeout=15, interval=0.2, what="dns.state=ok again")
    assert dns["records"] == [f"{host['slug']}.{ZONE} A 192.0.2.7"]
    assert len(standin.zone(ZONE_ID)) == 1
