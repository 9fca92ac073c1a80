"""The presence projection in a real Valkey: compare-and-set writes, position, rebuild."""

from __future__ import annotations

import asyncio
import random
import secrets

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from directory.consumer import StreamConsumer
from directory.events import Connected, Disconnected, HostRemoved, RedisEventLog, decode_entry
from directory.keys import Keys
from directory.presence import Presence, PresenceStore, fold_all
from directory.rebuild import fold_log, rebuild_presence
from directory.stats import Stats
from tests.unit.test_presence_fold import deliveries, histories


def conn(host, epoch, at=1.0, machine="m1"):
    return Connected(
        host_id=host,
        machine_id=machine,
        epoch=epoch,
        remote_addr="9.9.9.9",
        agent_version="v",
        at=at,
    )


def disc(host, epoch, reason="closed", at=2.0, machine="m1"):
    return Disconnected(host_id=host, machine_id=machine, epoch=epoch, reason=reason, at=at)


async def test_apply_folds_and_stores_with_its_position(redis_client, keys):
    store = PresenceStore(redis_client, keys)
    assert await store.get("h_a") is None and await store.position() is None
    changed = await store.apply(
        [("5-0", conn("h_a", 1)), ("6-0", conn("h_b", 3)), ("7-0", disc("h_a", 1))]
    )
    assert changed == 2
    a, b = (await store.get_many(["h_a", "h_b"])).values()
    assert (a.online, a.disconnect_reason, b.online, b.epoch) == (False, "closed", True, 3)
    assert await store.position() == "7-0"
    # The position never goes back, even when older entries are applied late.
    await store.apply([("2-0", conn("h_c", 1))])
    assert await store.position() == "7-0"
    assert (await store.get("h_c")).online


async def test_removed_hosts_read_as_unknown_but_keep_their_tombstone(redis_client, keys):
    store = PresenceStore(redis_client, keys)
    await store.apply([("1-0", conn("h_a", 1)), ("2-0", HostRemoved(host_id="h_a", slug="s"))])
    assert await store.get("h_a") is None
    assert (await store.all())["h_a"] == Presence("h_a", removed=True)
    await store.apply([("3-0", conn("h_a", 2))])  # a late event cannot bring it back
    assert await store.get("h_a") is None


async def test_concurrent_writers_lose_no_event(redis_client, keys):
    """Many appliers racing on the same hosts: compare-and-set retries keep every event."""
    stats = Stats()
    store = PresenceStore(redis_client, keys, stats=stats)
    events = []
    for host in ("h_a", "h_b"):
        for epoch in range(1, 31):
            events.append(conn(host, epoch, at=epoch))
            events.append(disc(host, epoch, at=epoch + 0.5))
    events.append(conn("h_a", 31, at=40))
    entries = [(f"{i + 1}-0", e) for i, e in enumerate(events)]
    random.Random(7).shuffle(entries)
    await asyncio.gather(*(store.apply([entry]) for entry in entries))
    stored = await store.all()
    assert stored == fold_all(events)
    assert stored["h_a"].online and stored["h_a"].epoch == 31
    assert not stored["h_b"].online and stored["h_b"].epoch == 30
    assert stats.get("relay_presence_write_conflicts_total") > 0  # the race really happened


async def test_a_corrupt_record_is_counted_and_folded_over(redis_client, keys):
    stats = Stats()
    store = PresenceStore(redis_client, keys, stats=stats)
    await redis_client.hset(keys.presence(), "h_a", b"garbage")
    assert await store.get("h_a") is None
    assert stats.get("relay_presence_corrupt_total") == 1
    await store.apply([("1-0", conn("h_a", 4))])
    assert (await store.get("h_a")).epoch == 4


async def test_rebuild_repairs_a_damaged_projection_and_then_finds_nothing_to_do(
    redis_client, keys
):
    log = RedisEventLog(redis_client, keys)
    store = PresenceStore(redis_client, keys)
    await log.append_many([conn("h_a", 1), disc("h_a", 1), conn("h_b", 1), conn("h_c", 2)])
    rebuilt, position, _ = await fold_log(log)
    await store.replace(rebuilt, position)
    # Damage: a host forgotten, a host lying, a host that never existed.
    await redis_client.hdel(keys.presence(), "h_a")
    await store.replace(
        {
            **(await store.all()),
            "h_b": Presence("h_b", online=False),
            "h_x": Presence("h_x", online=True),
        },
        position,
    )
    dry = await rebuild_presence(log, store, dry_run=True)
    assert (dry.added, dry.removed, dry.changed, dry.dry_run) == (1, 1, 1, True)
    assert {c.host_id for c in dry.changes} == {"h_a", "h_b", "h_x"}
    assert "h_x" in await store.all()  # a dry run changes nothing
    report = await rebuild_presence(log, store)
    assert report.complete and report.events == 4 and report.hosts == 3
    assert await store.all() == rebuilt
    again = await rebuild_presence(log, store)
    assert (again.added, again.removed, again.changed, again.unchanged) == (0, 0, 0, 3)


async def test_rebuild_of_a_trimmed_log_repairs_without_forgetting(redis_client, keys):
    log = RedisEventLog(redis_client, keys, maxlen=10)
    store = PresenceStore(redis_client, keys)
    old = [conn("h_old", 1, at=1)]
    await log.append_many(old)
    await store.apply([("1-0", old[0])])
    for start in range(0, 300, 50):  # churn of other hosts trims h_old's history away
        await log.append_many([conn(f"h_{i}", 1) for i in range(start, start + 50)])
    await redis_client.hdel(keys.presence(), "h_5")
    report = await rebuild_presence(log, store)
    assert not report.complete
    stored = await store.all()
    assert stored["h_old"].online  # kept: the log can no longer say otherwise
    assert stored["h_299"].online  # the log's own hosts are there


async def test_rebuild_while_consumers_apply_loses_nothing(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    store = PresenceStore(redis_client, keys)
    first = [conn(f"h_{i}", 1) for i in range(200)]
    await log.append_many(first)
    consumer = StreamConsumer(
        redis_client,
        keys,
        "presence",
        "c1",
        batch_handler=store.apply,
        batch_size=20,
        block_ms=20,
        stats=Stats(),
    )
    consumer.start()
    later = [disc(f"h_{i}", 1) for i in range(200)]

    async def append_later():
        for i in range(0, 200, 10):
            await log.append_many(later[i : i + 10])
            await asyncio.sleep(0.002)

    await asyncio.gather(rebuild_presence(log, store), append_later())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while (await redis_client.xpending(keys.events(), "presence"))["pending"] or (
            await store.all()
        ) != fold_all(first + later):
            assert asyncio.get_running_loop().time() < deadline, "projection never converged"
            await asyncio.sleep(0.02)
    finally:
        await consumer.close()


async def _live_vs_rebuild(store, delivered) -> None:
    client = await store.connect()
    keys = Keys(f"hy{secrets.token_hex(4)}")
    try:
        log = RedisEventLog(client, keys)
        store = PresenceStore(client, keys)
        await log.append_many(delivered)
        # A consumer dies after applying part of its batch: its entries are applied again.
        await client.xgroup_create(keys.events(), "presence", id="0", mkstream=True)
        held = await client.xreadgroup("presence", "doomed", {keys.events(): ">"}, count=5)
        if held:
            entries = [(i.decode(), decode_entry(i.decode(), f)) for i, f in held[0][1]]
            await store.apply(entries[:2])
        consumers = [
            StreamConsumer(
                client,
                keys,
                "presence",
                f"c{n}",
                batch_handler=store.apply,
                batch_size=3,
                block_ms=10,
                claim_idle=0.01,
                claim_interval=0.01,
                stats=Stats(),
            )
            for n in range(2)
        ]
        for _ in range(200):
            await asyncio.gather(*(c.step() for c in consumers))
            if not (await client.xpending(keys.events(), "presence"))["pending"]:
                info = await client.xinfo_groups(keys.events())
                if info[0]["lag"] == 0:
                    break
        live = await store.all()
        rebuilt, _, _ = await fold_log(log)
        assert live == rebuilt
        report = await rebuild_presence(log, store, dry_run=True)
        assert (report.added, report.removed, report.changed) == (0, 0, 0)
    finally:
        await client.flushall()
        await client.aclose()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_rebuild_from_the_log_equals_the_live_state(store, data):
    """Shuffled, duplicated appends applied live by racing consumers == a fold of the log."""
    lives = [data.draw(histories(f"h_{i:016x}")) for i in range(2)]
    events = [e for life in lives for e in life.events]
    delivered = data.draw(deliveries(events))
    asyncio.run(_live_vs_rebuild(store, delivered))
    # ... and the order-tolerant fold makes that the truth of the in-order history.
    assert fold_all(delivered) == fold_all(events)
