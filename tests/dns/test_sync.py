"""Full sync against a real store and the in-memory provider: the safety rules."""

from __future__ import annotations

import time

import msgspec
import pytest

from directory.dns.memory import MemoryProvider
from directory.dns.records import DnsRecord
from directory.errors import DnsConflict, DnsDisabled, DnsRecordNotFound, DnsUnavailable
from tests.dns.conftest import ZONE

# The DNS keys (per-host state and locks, the shared bucket) on one server and a cluster.
pytestmark = pytest.mark.parametrize("dns_store", ["single", "cluster"], indirect=True)


@pytest.fixture
def memory():
    return MemoryProvider(ZONE)


def ours(svc, name, content="relay.example.net", type_="CNAME", ttl=60, age=3600.0):
    return DnsRecord(
        name=name,
        type=type_,
        content=content,
        ttl=ttl,
        comment=svc.settings.marker,
        modified_at=time.time() - age,
    )


def names(provider):
    return sorted((r.name, r.type, r.content) for r in provider.records.values())


async def test_sync_creates_missing_updates_drift_deletes_orphans_and_spares_others(
    dns_env, memory
):
    svc = dns_env.service({ZONE: memory})
    a, _ = await dns_env.hosts.create("a")
    b, _ = await dns_env.hosts.create("b")
    c, _ = await dns_env.hosts.create("c")
    memory.add_foreign(ours(svc, f"{b.slug}.{ZONE}", content="old.example.net"))  # drifted
    memory.add_foreign(ours(svc, f"{c.slug}.{ZONE}"))  # already right
    memory.add_foreign(ours(svc, f"gone.{ZONE}"))  # orphan, ours
    foreign = [
        memory.add_foreign(DnsRecord(name=f"www.{ZONE}", type="CNAME", content="elsewhere.net")),
        memory.add_foreign(
            DnsRecord(
                name=f"old.{ZONE}",
                type="A",
                content="192.0.2.1",
                comment="relay-directory:other-deployment",
            )
        ),
    ]
    report = await svc.sync()
    assert (report.created, report.updated, report.deleted, report.already_synced) == (1, 1, 1, 1)
    assert (report.skipped, report.errors) == (0, 0)
    assert names(memory) == sorted(
        [(f"{h.slug}.{ZONE}", "CNAME", "relay.example.net") for h in (a, b, c)]
        + [(f"www.{ZONE}", "CNAME", "elsewhere.net"), (f"old.{ZONE}", "A", "192.0.2.1")]
    )
    for record in foreign:
        assert record in memory.records.values()
    statuses = await svc.statuses([a.id, b.id, c.id])
    assert all(s.state == "ok" and len(s.records) == 1 for s in statuses.values())
    again = await svc.sync()
    assert (again.created, again.updated, again.deleted, again.already_synced) == (0, 0, 0, 3)


async def test_a_dry_run_reports_and_changes_nothing(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    a, _ = await dns_env.hosts.create("a")
    memory.add_foreign(ours(svc, f"gone.{ZONE}"))
    before = dict(memory.records)
    report = await svc.sync(dry_run=True)
    assert report.dry_run
    assert (report.created, report.deleted) == (1, 1)
    assert f"would create {a.slug}.{ZONE} CNAME relay.example.net" in report.changes
    assert f"would delete gone.{ZONE} CNAME relay.example.net" in report.changes
    assert memory.records == before
    assert memory.writes == 0
    assert (await svc.statuses([a.id]))[a.id].state == "pending"


async def test_no_deletes_at_all_when_the_registry_cannot_be_read_completely(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    a, _ = await dns_env.hosts.create("a")
    b, _ = await dns_env.hosts.create("b")
    await dns_env.redis.set(dns_env.keys.host(b.id), b"{not json")
    memory.add_foreign(ours(svc, f"gone.{ZONE}"))
    memory.add_foreign(ours(svc, f"{b.slug}.{ZONE}"))
    report = await svc.sync()
    assert report.deleted == 0 and report.errors >= 1
    assert report.created == 1  # what could be read is still created
    assert (f"gone.{ZONE}", "CNAME", "relay.example.net") in names(memory)
    assert (f"{b.slug}.{ZONE}", "CNAME", "relay.example.net") in names(memory)
    assert (f"{a.slug}.{ZONE}", "CNAME", "relay.example.net") in names(memory)


async def test_a_zone_that_cannot_be_listed_is_left_entirely_alone(dns_env, memory):
    svc = dns_env.service({ZONE: memory}, attempts=2)
    await dns_env.hosts.create("a")
    memory.add_foreign(ours(svc, f"gone.{ZONE}"))
    memory.fail_with = DnsUnavailable("memory: down", provider="memory", status=500)
    report = await svc.sync()
    assert report.errors == 1 and report.skipped == 1
    assert (report.created, report.deleted) == (0, 0)
    assert memory.calls["ensure"] == memory.calls["delete"] == 0


async def test_young_orphans_are_spared_and_deletes_are_capped(dns_env, memory):
    svc = dns_env.service({ZONE: memory}, orphan_grace=60.0, max_deletes=2)
    memory.add_foreign(ours(svc, f"young.{ZONE}", age=5))
    for i in range(4):
        memory.add_foreign(ours(svc, f"old{i}.{ZONE}"))
    report = await svc.sync()
    assert report.deleted == 2
    assert report.skipped == 3
    left = [n for n, _, _ in names(memory)]
    assert f"young.{ZONE}" in left and len(left) == 3
    assert (await svc.sync()).deleted == 2  # the next pass takes the next ones
    assert [n for n, _, _ in names(memory)] == [f"young.{ZONE}"]


async def test_sync_after_a_record_was_deleted_by_hand_recreates_it(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    a, _ = await dns_env.hosts.create("a")
    await svc.converger.converge([a.id])
    memory.records.clear()  # someone deleted it at the provider
    await svc.converger.converge([a.id])
    assert memory.records == {}, "the worker trusts its cache: no calls on churn"
    report = await svc.sync()
    assert report.created == 1
    assert names(memory) == [(f"{a.slug}.{ZONE}", "CNAME", "relay.example.net")]


async def test_delete_record_only_deletes_ours_and_only_unwanted(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    a, _ = await dns_env.hosts.create("a")
    await svc.converger.converge([a.id])
    memory.add_foreign(DnsRecord(name=f"www.{ZONE}", type="A", content="192.0.2.1"))
    memory.add_foreign(ours(svc, f"gone.{ZONE}"))
    with pytest.raises(DnsRecordNotFound):
        await svc.delete_record(f"nothing.{ZONE}")
    with pytest.raises(DnsRecordNotFound):
        await svc.delete_record("other.org")
    with pytest.raises(DnsConflict):
        await svc.delete_record(f"www.{ZONE}")
    with pytest.raises(DnsConflict, match="still wanted"):
        await svc.delete_record(f"{a.slug}.{ZONE}")
    deleted = await svc.delete_record(f"GONE.{ZONE}.")
    assert [r.name for r in deleted] == [f"gone.{ZONE}"]
    records = await svc.records()
    assert {(r.name, r.ours) for r in records} == {
        (f"www.{ZONE}", False),
        (f"{a.slug}.{ZONE}", True),
    }


async def test_wildcard_mode_writes_nothing_and_says_so(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    svc.settings = msgspec.structs.replace(svc.settings, mode="wildcard")
    host, _ = await dns_env.hosts.create("a")
    assert (await svc.statuses([host.id]))[host.id].state == "disabled"
    with pytest.raises(DnsDisabled):
        await svc.sync()
    await svc.mark_dirty([host.id])
    assert await svc.states.dirty_count() == 0
