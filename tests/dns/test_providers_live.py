"""The provider contract against a real PowerDNS server and the Cloudflare stand-in."""

from __future__ import annotations

import pytest

from directory.dns.cloudflare import CloudflareProvider
from directory.dns.powerdns import PowerDnsProvider
from tests.dns.cloudflare_standin import CloudflareStandIn
from tests.dns.conftest import ZONE
from tests.dns.contract import CHECKS

MARK = "relay-directory:live"
ZONE_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def standin():
    s = await CloudflareStandIn().start()
    yield s
    await s.stop()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_powerdns_meets_the_contract(check, pdns_zone):
    p = PowerDnsProvider(ZONE, api_url=pdns_zone.api_url, api_key=pdns_zone.api_key, marker=MARK)
    try:
        await check(p, ZONE, MARK)
    finally:
        await p.aclose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_cloudflare_standin_meets_the_contract(check, standin):
    p = CloudflareProvider(ZONE, zone_id=ZONE_ID, api_token=standin.token, api_base=standin.url)
    try:
        await check(p, ZONE, MARK)
    finally:
        await p.aclose()


async def test_cloudflare_pagination_against_the_standin(standin):
    for i in range(1203):
        standin.add(ZONE_ID, f"h{i}.{ZONE}", "A", "192.0.2.1")
    p = CloudflareProvider(ZONE, zone_id=ZONE_ID, api_token=standin.token, api_base=standin.url)
    try:
        records = await p.list()
    finally:
        await p.aclose()
    assert len(records) == 1203
    assert standin.calls["list"] == 3  # 500 per page
