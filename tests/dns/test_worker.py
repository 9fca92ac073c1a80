"""Level-triggered convergence against a real store and the in-memory provider."""

from __future__ import annotations

import time

import pytest

from directory.dns.memory import MemoryProvider
from directory.dns.ratelimit import MemoryRateLimiter, RedisRateLimiter, bucket_shape
from directory.dns.records import DnsRecord
from directory.dns.state import DnsKeys
from directory.errors import DnsRateLimited, DnsRejected, DnsUnavailable
from directory.events import (
    Connected,
    Disconnected,
    DnsWriteFailed,
    DnsWriteSucceeded,
    HostRegistered,
)
from tests.dns.conftest import TEST_ZONE, ZONE
from tests.servers import wait_for

# The DNS keys (per-host state and locks, the shared bucket) on one server and a cluster.
pytestmark = pytest.mark.parametrize("dns_store", ["single", "cluster"], indirect=True)


@pytest.fixture
def memory():
    return MemoryProvider(ZONE)


async def status(svc, host_id):
    return (await svc.statuses([host_id]))[host_id]


async def test_a_new_host_gets_its_record_and_its_status_says_so(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    host, _ = await dns_env.hosts.create("web")
    assert (await status(svc, host.id)).state == "pending"
    await svc.converger.converge([host.id])
    assert [(r.name, r.type, r.content) for r in memory.records.values()] == [
        (f"{host.slug}.{ZONE}", "CNAME", "relay.example.net")
    ]
    st = await status(svc, host.id)
    assert st.state == "ok"
    assert st.records == [f"{host.slug}.{ZONE} CNAME relay.example.net"]
    assert dns_env.metrics.writes[("create", "ok")] == 1
    assert [type(e) for e in svc.emitted] == [DnsWriteSucceeded]
    assert svc.emitted[0].host_id == host.id and svc.emitted[0].op == "create"


async def test_reconnect_churn_costs_no_provider_call_at_all(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    host, _ = await dns_env.hosts.create("web")
    await svc.converger.converge([host.id])
    calls = dict(memory.calls)
    for _ in range(100):
        epoch = await dns_env.ownership.claim(host.id, "m1", 5000)
        await svc.handle_events(
            [
                (
                    "1-0",
                    Connected(
                        host_id=host.id,
                        machine_id="m1",
                        epoch=epoch,
                        remote_addr="x",
                        agent_version="t",
                    ),
                )
            ]
        )
        await dns_env.ownership.release(host.id, "m1", epoch)
        await svc.handle_events(
            [("1-1", Disconnected(host_id=host.id, machine_id="m1", epoch=epoch, reason="closed"))]
        )
        ids = await svc.states.pop_dirty(10)
        assert ids == [host.id]
        await svc.converger.converge(ids)
    assert memory.calls == calls  # not a read, not a write
    assert (await status(svc, host.id)).state == "ok"


async def test_our_own_dns_events_do_not_mark_hosts_dirty(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    await svc.handle_events(
        [
            ("1-0", DnsWriteSucceeded(host_id="h_1", fqdn="a", op="create")),
            ("1-1", DnsWriteFailed(host_id="h_2", fqdn="a", op="create", error="x")),
            ("1-2", HostRegistered(host_id="h_3", slug="s", name="n")),
        ]
    )
    assert await svc.states.pop_dirty(10) == ["h_3"]


async def test_records_outlive_a_short_disconnect_and_go_after_the_grace(dns_env, memory):
    svc = dns_env.service({ZONE: memory}, offline_grace=0.5)
    now = [time.time()]
    svc.converger.clock = lambda: now[0]  # time jumps; nothing sleeps
    host, _ = await dns_env.hosts.create("web")  # never connected: offline since creation
    await svc.converger.converge([host.id])
    assert len(memory.records) == 1
    epoch = await dns_env.ownership.claim(host.id, "m1", 60_000)
    now[0] += 0.6  # past the grace, but online
    await svc.converger.converge([host.id])
    assert len(memory.records) == 1, "online hosts keep their records"
    await dns_env.ownership.release(host.id, "m1", epoch)
    await dns_env.presence.apply(
        [
            (
                "1-0",
                Connected(
                    host_id=host.id,
                    machine_id="m1",
                    epoch=epoch,
                    remote_addr="x",
                    agent_version="t",
                    at=now[0],
                ),
            ),
            (
                "1-1",
                Disconnected(
                    host_id=host.id, machine_id="m1", epoch=epoch, reason="closed", at=now[0]
                ),
            ),
        ]
    )
    await svc.converger.converge([host.id])
    assert len(memory.records) == 1, "a disconnect shorter than the grace keeps them"
    now[0] += 0.6  # the disconnect is now older than the grace
    await svc.converger.converge([host.id])
    assert memory.records == {}
    st = await status(svc, host.id)
    assert st.state == "ok" and st.records == []


async def test_removing_a_host_deletes_its_records_and_its_state(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    host, _ = await dns_env.hosts.create("web")
    await svc.converger.converge([host.id])
    await dns_env.hosts.delete(host.id)
    await svc.converger.converge([host.id])
    assert memory.records == {}
    assert await svc.states.get_many([host.id]) == {host.id: None}
    assert await svc.states.tracked() == []
    assert dns_env.metrics.writes[("delete", "ok")] == 1


async def test_a_record_someone_else_owns_at_the_name_is_left_alone_and_shown(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    host, _ = await dns_env.hosts.create("web")
    foreign = memory.add_foreign(
        DnsRecord(name=f"{host.slug}.{ZONE}", type="TXT", content="mine", comment="ops")
    )
    await svc.converger.converge([host.id])
    assert list(memory.records.values()) == [foreign]
    st = await status(svc, host.id)
    assert st.state == "error"
    assert "not managed by this relay" in st.last_error
    assert dns_env.metrics.conflicts == 1


async def test_a_failing_provider_shows_on_the_host_at_once_and_recovers(dns_env, memory):
    svc = dns_env.service({ZONE: memory}, attempts=2)
    host, _ = await dns_env.hosts.create("web")
    memory.fail_with = DnsUnavailable("memory: injected outage", provider="memory", status=503)
    started = time.time()
    await svc.converger.converge([host.id])
    st = await status(svc, host.id)
    assert st.state == "error"
    assert "injected outage" in st.last_error
    assert started <= st.last_error_at <= time.time()
    assert dns_env.metrics.lists["error"] == 2  # the first converge reads the name first
    memory.fail_with = None
    await svc.converger.converge([host.id])
    memory.fail_with = DnsUnavailable("memory: injected outage", provider="memory", status=503)
    await dns_env.hosts.delete(host.id)
    await svc.converger.converge([host.id])
    assert dns_env.metrics.write_errors[("delete", "503")] == 2  # each attempt counted
    assert [type(e).__name__ for e in svc.emitted].count("DnsWriteFailed") == 2
    failed = [e for e in svc.emitted if isinstance(e, DnsWriteFailed)]
    assert failed[0].http_status == 503 and failed[0].host_id == host.id
    memory.fail_with = None
    await svc.converger.converge([host.id])
    assert memory.records == {}


async def test_429_pauses_and_retries_after_retry_after(dns_env, memory):
    limiter = MemoryRateLimiter(limit=100_000, window=1)
    dns_env.limiter = limiter
    svc = dns_env.service({ZONE: memory})
    host, _ = await dns_env.hosts.create("web")
    original = memory.ensure
    calls = []

    async def flaky(upserts):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise DnsRateLimited("memory: 429", provider="memory", status=429, retry_after=1.0)
        return await original(upserts)

    memory.ensure = flaky
    await svc.converger.converge([host.id])
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.95
    assert dns_env.metrics.write_errors[("create", "429")] == 1
    assert dns_env.metrics.writes[("create", "ok")] == 1
    assert (await status(svc, host.id)).state == "ok"


async def test_one_refused_record_does_not_block_the_others(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    hosts = [(await dns_env.hosts.create(f"h{i}"))[0] for i in range(3)]
    for h in hosts:
        await svc.converger.converge([h.id])  # cache known, so the batch below is one write
    for h in hosts:
        await dns_env.hosts.delete(h.id)
    bad = hosts[1]
    original = memory.delete

    async def picky(records):
        if any(r.name.startswith(bad.slug) for r in records):
            raise DnsRejected("memory: refused", provider="memory", status=400)
        return await original(records)

    memory.delete = picky
    result = await svc.converger.converge([h.id for h in hosts])
    assert result.failed == 1 and result.written == 2
    assert [r.name for r in memory.records.values()] == [f"{bad.slug}.{ZONE}"]


async def test_a_host_being_converged_elsewhere_is_put_back(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    host, _ = await dns_env.hosts.create("web")
    assert await svc.states.lock([host.id], "other-machine", 5000) == [host.id]
    result = await svc.converger.converge([host.id])
    assert result.requeued == [host.id]
    assert memory.calls["ensure"] == 0
    assert await svc.states.pop_dirty(10) == [host.id]


async def test_test_hosts_live_in_the_test_zone(dns_env, memory):
    test_zone = MemoryProvider(TEST_ZONE)
    svc = dns_env.service({ZONE: memory, TEST_ZONE: test_zone}, test_zone=TEST_ZONE)
    host, _ = await dns_env.hosts.create("ci", "test-abc", test=True)
    await svc.converger.converge([host.id])
    assert memory.records == {}
    assert [r.name for r in test_zone.records.values()] == [f"test-abc.{TEST_ZONE}"]


async def test_the_running_service_converges_marked_hosts_by_itself(dns_env, memory):
    svc = dns_env.service({ZONE: memory})
    svc.start()
    host, _ = await dns_env.hosts.create("web")
    await svc.mark_dirty([host.id])
    await wait_for(lambda: memory.records, timeout=3, what="the record")

    async def settled() -> bool:
        return (await status(svc, host.id)).state == "ok"

    await wait_for(settled, timeout=3, what="dns.state ok")
    await dns_env.hosts.delete(host.id)
    await svc.mark_dirty([host.id])
    await wait_for(lambda: not memory.records, timeout=3, what="the delete")


async def test_the_leader_sweep_repairs_what_no_event_announced(dns_env, memory):
    svc = dns_env.service({ZONE: memory}, sweep_interval=0.2)
    host, _ = await dns_env.hosts.create("web")  # no mark: only the sweep can find it
    svc.start()
    await wait_for(lambda: memory.records, timeout=3, what="the swept record")


async def test_the_shared_rate_limit_holds_every_machine(dns_env):
    burst, refill = bucket_shape(1200, 300)
    assert burst == 120 and burst + refill * 300 <= 1200
    k = DnsKeys(dns_env.keys)
    a = RedisRateLimiter(dns_env.redis, k.rate(), k.rate_pause(), limit=20, window=1.0)
    b = RedisRateLimiter(dns_env.redis, k.rate(), k.rate_pause(), limit=20, window=1.0)
    started = time.monotonic()
    for _ in range(2):
        await a.acquire()
        await b.acquire()  # burst is 2 tokens for both together
    waited = time.monotonic() - started
    assert waited >= 0.08  # the third and fourth token had to be refilled (18/s)
    await a.pause(0.3)
    started = time.monotonic()
    await b.acquire()
    assert time.monotonic() - started >= 0.25


async def test_a_failing_host_backs_off_instead_of_costing_calls_every_sweep(dns_env, memory):
    svc = dns_env.service({ZONE: memory}, error_backoff=30.0)
    host, _ = await dns_env.hosts.create("web")
    memory.add_foreign(
        DnsRecord(name=f"{host.slug}.{ZONE}", type="CNAME", content="theirs.example.org")
    )
    await svc.converger.converge([host.id])
    calls = dict(memory.calls)
    for _ in range(5):  # sweeps
        result = await svc.converger.converge([host.id])
        assert result.deferred == 1
    assert memory.calls == calls
    (state,) = (await svc.states.get_many([host.id])).values()
    assert state.state == "error" and state.retry_at >= time.time() + 25
    # Once the foreign record is gone, a sync (not bound by the backoff) fixes the host.
    memory.records.clear()
    report = await svc.sync()
    assert report.created == 1
    (state,) = (await svc.states.get_many([host.id])).values()
    assert state.state == "ok" and state.retry_at is None
