"""Consumer groups on a real Valkey: at-least-once, reclaim, dead letters, order of acks."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from directory.consumer import StreamConsumer
from directory.events import Connected, RedisEventLog, encode_event
from directory.stats import Stats
from tests.servers import wait_for


def ev(i: int) -> Connected:
    return Connected(
        host_id=f"h_{i:016x}", machine_id="m1", epoch=i, remote_addr="1.2.3.4", agent_version="v"
    )


class Recorder:
    """A handler that records what it saw and fails for the epochs in ``bad``."""

    def __init__(self, bad=()):
        self.seen: list[tuple[str, int]] = []
        self.bad = set(bad)

    async def __call__(self, entry_id, event):
        if event.epoch in self.bad:
            raise RuntimeError(f"cannot handle epoch {event.epoch}")
        self.seen.append((entry_id, event.epoch))


def consumer(redis_client, keys, handler=None, name="c1", stats=None, **kw):
    kw.setdefault("block_ms", 50)
    kw.setdefault("claim_idle", 0.2)
    return StreamConsumer(redis_client, keys, "g", name, handler, stats=stats or Stats(), **kw)


async def pending(redis_client, keys):
    return (await redis_client.xpending(keys.events(), "g"))["pending"]


async def steps(c, n=1):
    for _ in range(n):
        await c.step()


async def test_every_entry_is_handled_in_order_and_acknowledged(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    ids = await log.append_many([ev(i) for i in range(20)])
    rec = Recorder()
    c = consumer(redis_client, keys, rec, batch_size=7)
    await steps(c, 5)
    assert rec.seen == [(i, n) for n, i in enumerate(ids)]
    assert await pending(redis_client, keys) == 0


async def test_a_failing_entry_is_retried_then_dead_lettered_while_the_others_flow(
    redis_client, keys
):
    stats = Stats()
    log = RedisEventLog(redis_client, keys)
    ids = await log.append_many([ev(i) for i in range(5)])
    rec = Recorder(bad={2})
    with capture_logs() as logs:
        c = consumer(redis_client, keys, rec, stats=stats, max_deliveries=3, claim_interval=0.05)
        await c.step()
        assert [n for _, n in rec.seen] == [0, 1, 3, 4]
        assert await pending(redis_client, keys) == 1

        async def parked():
            await c.step()
            return await redis_client.xlen(keys.dead_letters()) == 1

        await wait_for(parked, timeout=5, what="dead letter")
    assert await pending(redis_client, keys) == 0
    ((_, fields),) = await redis_client.xrange(keys.dead_letters())
    assert fields[b"id"].decode() == ids[2]
    assert fields[b"group"] == b"g" and fields[b"k"] == b"connected"
    assert fields[b"e"] == (await redis_client.xrange(keys.events(), ids[2], ids[2]))[0][1][b"e"]
    assert int(fields[b"deliveries"]) == 4
    assert stats.get("relay_events_dead_lettered_total", group="g") == 1
    assert stats.get("relay_events_handler_errors_total", group="g") == 3
    assert any(line["event"] == "events.dead_lettered" for line in logs)
    assert [n for _, n in rec.seen] == [0, 1, 3, 4]  # nothing handled twice


async def test_an_undecodable_entry_is_dead_lettered_at_once(redis_client, keys):
    stats = Stats()
    log = RedisEventLog(redis_client, keys)
    await log.append(ev(1))
    await log.append_raw([("connected", b'{"kind":"connected","epoch":"not a number"}')])
    await log.append(ev(3))
    rec = Recorder()
    c = consumer(redis_client, keys, rec, stats=stats)
    await c.step()
    assert [n for _, n in rec.seen] == [1, 3]
    assert await redis_client.xlen(keys.dead_letters()) == 1
    assert await pending(redis_client, keys) == 0
    assert stats.get("relay_events_dead_lettered_total") == 1


async def test_unknown_kinds_are_acknowledged_and_counted_without_the_handler(redis_client, keys):
    stats = Stats()
    log = RedisEventLog(redis_client, keys)
    await log.append_raw([("from_the_future", b"{}")])
    await log.append(ev(1))
    rec = Recorder()
    c = consumer(redis_client, keys, rec, stats=stats)
    await c.step()
    assert [n for _, n in rec.seen] == [1]
    assert stats.get("relay_events_unknown_skipped_total") == 1
    assert await pending(redis_client, keys) == 0


async def test_entries_of_a_consumer_that_died_mid_batch_are_reclaimed_and_handled(
    redis_client, keys
):
    stats = Stats()
    log = RedisEventLog(redis_client, keys)
    await log.append_many([ev(i) for i in range(10)])
    started = asyncio.Event()

    async def hang(entries):
        started.set()
        await asyncio.Event().wait()  # dies here, holding the whole batch unacknowledged

    doomed = StreamConsumer(
        redis_client, keys, "g", "doomed", batch_handler=hang, block_ms=50, stats=stats
    )
    doomed.start()
    await asyncio.wait_for(started.wait(), 5)
    await doomed.close()
    assert await pending(redis_client, keys) == 10
    rec = Recorder()
    survivor = consumer(redis_client, keys, rec, name="survivor", stats=stats, claim_interval=0.05)

    async def drained():
        await survivor.step()
        return await pending(redis_client, keys) == 0

    await wait_for(drained, timeout=5, what="reclaim")
    assert sorted(n for _, n in rec.seen) == list(range(10))
    assert stats.get("relay_events_reclaimed_total", group="g") == 10


async def test_a_restarted_consumer_first_finishes_what_it_held(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    await log.append_many([ev(i) for i in range(3)])
    # A previous life of c1 read them and died before acknowledging.
    await redis_client.xgroup_create(keys.events(), "g", id="0")
    await redis_client.xreadgroup("g", "c1", {keys.events(): ">"}, count=10)
    rec = Recorder()
    c = consumer(redis_client, keys, rec, claim_idle=60)  # no reclaim: its own memory
    await c.step()
    assert [n for _, n in rec.seen] == [0, 1, 2]
    assert await pending(redis_client, keys) == 0


async def test_a_batch_handler_failure_is_narrowed_to_the_bad_entry(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    await log.append_many([ev(i) for i in range(6)])
    calls = []

    async def batch(entries):
        calls.append(len(entries))
        if any(e.epoch == 4 for _, e in entries):
            raise ValueError("bad epoch 4")

    c = StreamConsumer(redis_client, keys, "g", "c1", batch_handler=batch, stats=Stats())
    await c.step()
    assert calls == [6, 1, 1, 1, 1, 1, 1]
    assert await pending(redis_client, keys) == 1


async def test_a_deleted_group_is_recreated_and_consumption_goes_on(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    await log.append(ev(1))
    rec = Recorder()
    c = consumer(redis_client, keys, rec)
    await c.step()
    await redis_client.xgroup_destroy(keys.events(), "g")
    await log.append(ev(2))
    await steps(c, 3)
    # A recreated group starts again from the beginning: at-least-once, never lost.
    assert [n for _, n in rec.seen][-1] == 2
    assert {n for _, n in rec.seen} == {1, 2}


async def test_the_background_loop_handles_entries_within_milliseconds(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    rec = Recorder()
    c = consumer(redis_client, keys, rec, block_ms=200)
    c.start()
    try:
        await wait_for(lambda: c._group_ready, what="group")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await log.append(ev(1))
        await wait_for(lambda: rec.seen, timeout=2, interval=0.001, what="handled")
        assert loop.time() - t0 < 0.1
    finally:
        await c.close()


async def test_lifecycle_is_explicit(redis_client, keys):
    c = consumer(redis_client, keys, Recorder())
    c.start()
    with pytest.raises(RuntimeError):
        c.start()
    await c.close()
    await c.close()
    with pytest.raises(RuntimeError):
        await c.step()
    with pytest.raises(ValueError):
        StreamConsumer(redis_client, keys, "g", "x")


async def test_dead_letters_keep_the_body_for_people_to_replay(redis_client, keys):
    log = RedisEventLog(redis_client, keys)
    bad = b'{"kind":"connected"}'
    await log.append_raw([("connected", bad)])
    c = consumer(redis_client, keys, Recorder())
    await c.step()
    ((_, fields),) = await redis_client.xrange(keys.dead_letters())
    assert fields[b"e"] == bad and b"does not decode" in fields[b"error"]
    assert encode_event(ev(1))  # the codec itself is fine: the entry was the problem


async def test_own_pending_is_walked_once_so_a_failing_entry_cannot_stall_new_ones(
    redis_client, keys
):
    log = RedisEventLog(redis_client, keys)
    await log.append_many([ev(1), ev(2)])
    await redis_client.xgroup_create(keys.events(), "g", id="0")
    await redis_client.xreadgroup("g", "c1", {keys.events(): ">"}, count=10)
    await log.append(ev(3))
    rec = Recorder(bad={1})
    c = consumer(redis_client, keys, rec, claim_idle=60)
    await steps(c, 3)
    assert [n for _, n in rec.seen] == [2, 3]
    assert await pending(redis_client, keys) == 1  # epoch 1 waits for its reclaim


async def test_lag_is_the_age_of_the_batch_in_hand_and_zero_once_it_is_handled(redis_client, keys):
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(_entry_id, _event):
        started.set()
        await release.wait()

    log = RedisEventLog(redis_client, keys)
    (entry_id,) = await log.append_many([ev(1)])
    appended = int(entry_id.split("-")[0]) / 1000
    c = consumer(redis_client, keys, stuck)
    assert c.lag_seconds() == 0.0
    step = asyncio.create_task(c.step())
    await asyncio.wait_for(started.wait(), 5)
    # Measured from the entry's log time (the store's clock, here the same host's).
    assert c.lag_seconds(now=appended + 7.5) == pytest.approx(7.5)
    assert c.lag_seconds(now=appended - 1) == 0.0  # a store clock ahead of ours
    release.set()
    await asyncio.wait_for(step, 5)
    assert c.lag_seconds() == 0.0


async def test_the_alerting_series_of_a_group_exist_at_zero_from_the_start(redis_client, keys):
    stats = Stats()
    consumer(redis_client, keys, Recorder(), stats=stats)
    assert stats.series("relay_events_dead_lettered_total") == [({"group": "g"}, 0)]
    assert stats.series("relay_events_applied_total") == [({"group": "g"}, 0)]
