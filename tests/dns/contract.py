"""One contract every DNS provider meets; run against memory, PowerDNS and the CF stand-in.

Each ``check_*`` takes a provider on an empty zone ``zone`` and a marker.
"""

from __future__ import annotations

from directory.dns.provider import Upsert
from directory.dns.records import DnsRecord


def rec(
    zone: str,
    label: str,
    type_: str = "CNAME",
    content: str = "relay.example.net",
    *,
    marker: str | None,
    ttl: int = 60,
) -> DnsRecord:
    return DnsRecord(name=f"{label}.{zone}", type=type_, content=content, ttl=ttl, comment=marker)


def ours(records, marker):
    return sorted((r.name, r.type, r.content, r.ttl) for r in records if r.is_ours(marker))


async def check_ensure_creates_then_updates_in_place(provider, zone, marker):
    a = rec(zone, "alpha", marker=marker)
    b = rec(zone, "beta", "A", "192.0.2.10", marker=marker)
    written = await provider.ensure([Upsert(a), Upsert(b)])
    assert {r.key for r in written} == {a.key, b.key}
    listed = await provider.list()
    assert ours(listed, marker) == [
        (a.name, "CNAME", "relay.example.net", 60),
        (b.name, "A", "192.0.2.10", 60),
    ]
    current = next(r for r in listed if r.key == b.key)
    changed = DnsRecord(name=b.name, type="A", content="192.0.2.11", ttl=120, comment=marker)
    await provider.ensure([Upsert(changed, current)])
    listed = await provider.list()
    assert ours(listed, marker) == [
        (a.name, "CNAME", "relay.example.net", 60),
        (b.name, "A", "192.0.2.11", 120),
    ]
    assert len([r for r in listed if r.key == b.key]) == 1


async def check_list_by_name_and_delete(provider, zone, marker):
    a = rec(zone, "gamma", marker=marker)
    b = rec(zone, "delta", marker=marker)
    await provider.ensure([Upsert(a), Upsert(b)])
    only = await provider.list(a.name)
    assert [r.name for r in only] == [a.name]
    await provider.delete([r for r in only])
    left = ours(await provider.list(), marker)
    assert left == [(b.name, "CNAME", "relay.example.net", 60)]


async def check_names_and_contents_come_back_normalized(provider, zone, marker):
    a = rec(zone, "epsilon", marker=marker)
    await provider.ensure([Upsert(a)])
    (got,) = [r for r in await provider.list(a.name) if r.type == "CNAME"]
    assert got.name == a.name
    assert got.content == "relay.example.net"  # no trailing dot
    assert got.comment == marker
    assert got.is_ours(marker)


async def check_closed_provider_refuses_use(provider, zone, marker):
    await provider.aclose()
    try:
        await provider.list()
    except RuntimeError:
        return
    raise AssertionError("a closed provider answered")


CHECKS = [
    check_ensure_creates_then_updates_in_place,
    check_list_by_name_and_delete,
    check_names_and_contents_come_back_normalized,
    check_closed_provider_refuses_use,
]
