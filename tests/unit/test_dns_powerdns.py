"""The PowerDNS provider against ``httpx.MockTransport`` handlers speaking the v1 API."""

from __future__ import annotations

import json

import httpx
import pytest

from directory.dns.powerdns import PowerDnsProvider
from directory.dns.provider import Upsert, retry_after_seconds
from directory.dns.records import DnsRecord
from directory.errors import (
    DnsAuthError,
    DnsBadResponse,
    DnsRateLimited,
    DnsRejected,
    DnsUnavailable,
)

MARK = "relay-directory:relay"
ZONE_PATH = "/api/v1/servers/localhost/zones/example.com."


def provider(handler) -> PowerDnsProvider:
    return PowerDnsProvider(
        "example.com",
        api_url="http://pdns.test:8081",
        api_key="key",
        marker=MARK,
        transport=httpx.MockTransport(handler),
    )


def zone(*rrsets):
    return httpx.Response(200, json={"name": "example.com.", "rrsets": list(rrsets)})


def rrset(name, type_, *contents, comments=(), ttl=60):
    return {
        "name": name,
        "type": type_,
        "ttl": ttl,
        "records": [{"content": c, "disabled": False} for c in contents],
        "comments": [{"content": c, "account": "x", "modified_at": 1700000000} for c in comments],
    }


async def test_list_maps_rrsets_to_records_with_our_marker():
    def handler(request):
        assert request.headers["X-API-Key"] == "key"
        assert request.url.path == ZONE_PATH
        return zone(
            rrset("example.com.", "SOA", "ns1. host. 1 2 3 4 5"),
            rrset("a.example.com.", "CNAME", "relay.example.net.", comments=["someone", MARK]),
            rrset("b.example.com.", "A", "192.0.2.2", "192.0.2.1"),
        )

    records = {r.name: r for r in await provider(handler).list()}
    assert records["a.example.com"].content == "relay.example.net"
    assert records["a.example.com"].is_ours(MARK)
    assert records["a.example.com"].modified_at == 1700000000
    # Two contents in one rrset read as one record that never matches a single wanted one.
    assert records["b.example.com"].content == "192.0.2.1,192.0.2.2"
    assert not records["b.example.com"].is_ours(MARK)


async def test_list_by_name_filters_even_if_the_server_ignores_the_filter():
    def handler(request):
        assert request.url.params["rrset_name"] == "a.example.com."
        return zone(
            rrset("a.example.com.", "A", "192.0.2.1"), rrset("b.example.com.", "A", "192.0.2.1")
        )

    assert [r.name for r in await provider(handler).list("a.example.com")] == ["a.example.com"]


async def test_ensure_and_delete_are_single_patches_with_fqdns_and_our_comment():
    bodies = []

    def handler(request):
        assert request.method == "PATCH"
        bodies.append(json.loads(request.content))
        return httpx.Response(204)

    p = provider(handler)
    await p.ensure(
        [
            Upsert(
                DnsRecord(
                    name="a.example.com",
                    type="CNAME",
                    content="relay.example.net",
                    ttl=60,
                    comment=MARK,
                )
            ),
            Upsert(
                DnsRecord(
                    name="b.example.com", type="AAAA", content="2001:db8::1", ttl=60, comment=MARK
                )
            ),
        ]
    )
    await p.delete([DnsRecord(name="c.example.com", type="A", content="192.0.2.1")])
    assert bodies[0]["rrsets"][0] == {
        "name": "a.example.com.",
        "type": "CNAME",
        "ttl": 60,
        "changetype": "REPLACE",
        "records": [{"content": "relay.example.net.", "disabled": False}],
        "comments": [{"content": MARK, "account": "relay-directory"}],
    }
    assert bodies[0]["rrsets"][1]["records"] == [{"content": "2001:db8::1", "disabled": False}]
    assert bodies[1] == {
        "rrsets": [{"name": "c.example.com.", "type": "A", "changetype": "DELETE"}]
    }


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, "Unauthorized", DnsAuthError),
        (
            422,
            '{"error": "RRset a.example.com. IN CNAME: Conflicts with pre-existing RRset"}',
            DnsRejected,
        ),
        (500, '{"error": "backend failed"}', DnsUnavailable),
        (503, "", DnsUnavailable),
    ],
)
async def test_error_statuses_map_to_typed_errors(status, body, error):
    p = provider(lambda request: httpx.Response(status, text=body))
    with pytest.raises(error) as caught:
        await p.ensure(
            [Upsert(DnsRecord(name="a.example.com", type="A", content="192.0.2.1", comment=MARK))]
        )
    assert caught.value.status == status
    if status == 422:
        assert "Conflicts with pre-existing RRset" in str(caught.value)


async def test_429_with_an_http_date_retry_after():
    p = provider(
        lambda request: httpx.Response(
            429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
        )
    )
    with pytest.raises(DnsRateLimited) as caught:
        await p.list()
    assert caught.value.retry_after == 0  # a date in the past: retry now
    assert retry_after_seconds("12") == 12
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("999999") == 900  # capped


async def test_a_malformed_zone_is_a_bad_response():
    with pytest.raises(DnsBadResponse):
        await provider(lambda request: httpx.Response(200, text="{")).list()
    with pytest.raises(DnsBadResponse):
        await provider(lambda request: httpx.Response(200, json={"rrsets": "nope"})).list()


async def test_a_timeout_is_unavailable():
    def handler(request):
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(DnsUnavailable) as caught:
        await provider(handler).list()
    assert caught.value.retryable
