"""The Cloudflare provider against ``httpx.MockTransport`` handlers speaking API v4."""

from __future__ import annotations

import json

import httpx
import pytest

from directory.dns.cloudflare import CloudflareProvider
from directory.dns.provider import Upsert
from directory.dns.records import DnsRecord
from directory.errors import (
    DnsAuthError,
    DnsBadResponse,
    DnsRateLimited,
    DnsRejected,
    DnsUnavailable,
)

ZONE_ID = "023e105f4ecef8ad9ca31a8372d0c353"
MARK = "relay-directory:relay"


def cf_record(i: int, name: str, *, type_="CNAME", content="relay.example.net", comment=MARK):
    return {
        "id": f"{i:032x}",
        "name": name,
        "type": type_,
        "content": content,
        "ttl": 60,
        "proxied": False,
        "comment": comment,
        "created_on": "2026-01-01T00:00:00.000000Z",
        "modified_on": "2026-01-02T03:04:05.123456Z",
    }


def provider(handler, **kw) -> CloudflareProvider:
    return CloudflareProvider(
        "example.com",
        zone_id=ZONE_ID,
        api_token="tok",
        api_base="https://cf.test/client/v4",
        transport=httpx.MockTransport(handler),
        **kw,
    )


def envelope(result, info=None, status=200, errors=(), headers=None):
    body = {"success": not errors, "errors": list(errors), "messages": [], "result": result}
    if info:
        body["result_info"] = info
    return httpx.Response(status, json=body, headers=headers)


async def test_list_follows_every_page_and_sends_the_token():
    records = [cf_record(i, f"h{i}.example.com") for i in range(7)]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        assert request.url.path == f"/client/v4/zones/{ZONE_ID}/dns_records"
        page = int(request.url.params["page"])
        seen.append(page)
        chunk = records[(page - 1) * 3 : page * 3]
        return envelope(chunk, {"page": page, "per_page": 3, "total_pages": 3, "count": len(chunk)})

    listed = await provider(handler).list()
    assert seen == [1, 2, 3]
    assert [r.name for r in listed] == [f"h{i}.example.com" for i in range(7)]
    assert listed[0].id == f"{0:032x}"
    assert listed[0].is_ours(MARK)
    assert listed[0].modified_at == pytest.approx(1767323045.123456)


async def test_list_by_name_passes_the_filter():
    def handler(request):
        assert request.url.params["name"] == "a.example.com"
        return envelope([cf_record(1, "a.example.com")], {"page": 1, "total_pages": 1})

    assert [r.name for r in await provider(handler).list("a.example.com")] == ["a.example.com"]


async def test_writes_are_one_atomic_batch_of_posts_and_puts():
    bodies = []

    def handler(request):
        assert request.method == "POST"
        assert request.url.path.endswith("/dns_records/batch")
        body = json.loads(request.content)
        bodies.append(body)
        return envelope(
            {
                "puts": [
                    dict(cf_record(9, p["name"], content=p["content"]), id=p["id"])
                    for p in body.get("puts", [])
                ],
                "posts": [
                    cf_record(10 + i, p["name"], content=p["content"])
                    for i, p in enumerate(body.get("posts", []))
                ],
            }
        )

    new = DnsRecord(
        name="a.example.com", type="CNAME", content="relay.example.net", ttl=60, comment=MARK
    )
    old = DnsRecord(
        name="b.example.com",
        type="CNAME",
        content="old.example.net",
        ttl=60,
        comment=MARK,
        id="abc",
    )
    changed = DnsRecord(
        name="b.example.com", type="CNAME", content="relay.example.net", ttl=60, comment=MARK
    )
    written = await provider(handler).ensure([Upsert(new), Upsert(changed, old)])
    assert len(bodies) == 1
    (body,) = bodies
    assert body["posts"] == [
        {
            "name": "a.example.com",
            "type": "CNAME",
            "content": "relay.example.net",
            "ttl": 60,
            "proxied": False,
            "comment": MARK,
        }
    ]
    assert body["puts"][0]["id"] == "abc"
    assert {r.name for r in written} == {"a.example.com", "b.example.com"}
    assert all(r.id for r in written)


async def test_proxied_records_are_sent_with_automatic_ttl():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"posts": [cf_record(1, "a.example.com")]})

    rec = DnsRecord(
        name="a.example.com", type="A", content="192.0.2.1", ttl=300, proxied=True, comment=MARK
    )
    await provider(handler).ensure([Upsert(rec)])
    assert bodies[0]["posts"][0]["ttl"] == 1
    assert bodies[0]["posts"][0]["proxied"] is True


async def test_delete_sends_ids_in_one_batch():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"deletes": []})

    await provider(handler).delete(
        [
            DnsRecord(name="a.example.com", type="A", content="192.0.2.1", id="x1"),
            DnsRecord(name="b.example.com", type="A", content="192.0.2.1", id="x2"),
        ]
    )
    assert bodies == [{"deletes": [{"id": "x1"}, {"id": "x2"}]}]


async def test_429_is_rate_limited_with_retry_after():
    def handler(request):
        return envelope(
            None,
            status=429,
            errors=[{"code": 971, "message": "slow down"}],
            headers={"Retry-After": "7"},
        )

    with pytest.raises(DnsRateLimited) as caught:
        await provider(handler).list()
    assert caught.value.retryable
    assert caught.value.retry_after == 7
    assert caught.value.status == 429
    assert caught.value.provider_code == "971"


async def test_5xx_and_network_failures_are_retryable_unavailable():
    def handler(request):
        return httpx.Response(502, text="<html>bad gateway</html>")

    with pytest.raises(DnsUnavailable) as caught:
        await provider(handler).list()
    assert caught.value.retryable and caught.value.status == 502

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(DnsUnavailable) as caught:
        await provider(refuse).list()
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_an_auth_error_is_typed_and_not_retryable():
    def handler(request):
        return envelope(
            None, status=403, errors=[{"code": 10000, "message": "Authentication error"}]
        )

    with pytest.raises(DnsAuthError) as caught:
        await provider(handler).list()
    assert not caught.value.retryable
    assert "Authentication error" in str(caught.value)
    assert "tok" not in str(caught.value)  # the token never lands in a message


async def test_a_refused_change_carries_cloudflares_code():
    def handler(request):
        return envelope(
            None, status=400, errors=[{"code": 81053, "message": "record already exists"}]
        )

    with pytest.raises(DnsRejected) as caught:
        await provider(handler).ensure(
            [Upsert(DnsRecord(name="a.example.com", type="A", content="192.0.2.1", comment=MARK))]
        )
    assert caught.value.provider_code == "81053"
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"success": True, "result": [{"no": "id"}]}),
        httpx.Response(200, json={"success": True}),
        httpx.Response(200, json=["not", "an", "envelope"]),
    ],
)
async def test_a_malformed_body_is_a_bad_response(response):
    with pytest.raises(DnsBadResponse):
        await provider(lambda request: response).list()


async def test_success_false_in_a_200_is_an_error_not_a_success():
    def handler(request):
        return envelope(None, errors=[{"code": 1004, "message": "DNS Validation Error"}])

    with pytest.raises(DnsBadResponse) as caught:
        await provider(handler).delete(
            [DnsRecord(name="a.example.com", type="A", content="1.2.3.4", id="x")]
        )
    assert caught.value.provider_code == "1004"


async def test_a_closed_provider_refuses_use():
    p = provider(lambda request: envelope([]))
    await p.aclose()
    with pytest.raises(RuntimeError):
        await p.list()
