"""The presence reconciler on a real Valkey: owner expiry, fail-open, the lease, settling."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from directory.events import Connected, Disconnected, RedisEventLog
from directory.ownership import OwnershipStore
from directory.presence import PresenceStore
from directory.reconciler import PresenceReconciler
from directory.stats import Stats

TTL_MS = 60_000


def conn(host, epoch, machine="m-dead"):
    return Connected(
        host_id=host, machine_id=machine, epoch=epoch, remote_addr="9.9.9.9", agent_version="v"
    )


def reconciler(
    redis_client, keys, machine="m-live", stats=None, interval=0.5, settle=0.0, sleep=asyncio.sleep
):
    return PresenceReconciler(
        redis=redis_client,
        keys=keys,
        ownership=OwnershipStore(redis_client, keys),
        presence=PresenceStore(redis_client, keys),
        events=RedisEventLog(redis_client, keys),
        machine_id=machine,
        interval=interval,
        settle=settle,
        stats=stats or Stats(),
        sleep=sleep,
    )


async def online(redis_client, keys, *hosts_epochs):
    store = PresenceStore(redis_client, keys)
    await store.apply([(f"{i + 1}-0", conn(h, e)) for i, (h, e) in enumerate(hosts_epochs)])


async def appended(redis_client, keys):
    return [e for _, e in await RedisEventLog(redis_client, keys).read(None, 1000)]


async def test_an_online_host_without_owner_key_is_reported_owner_expired(redis_client, keys):
    ownership = OwnershipStore(redis_client, keys)
    held = await ownership.claim("h_held", "m-live", TTL_MS)
    await online(redis_client, keys, ("h_gone", 4), ("h_held", held))
    stats = Stats()
    with capture_logs() as logs:
        result = await reconciler(redis_client, keys, stats=stats).run_pass()
    assert (result.result, result.checked, result.expired) == ("ok", 2, ["h_gone"])
    (event,) = await appended(redis_client, keys)
    assert isinstance(event, Disconnected)
    assert (event.host_id, event.machine_id, event.epoch, event.reason) == (
        "h_gone",
        "m-dead",
        4,
        "owner_expired",
    )
    assert stats.get("relay_presence_owner_expired_total") == 1
    assert any(line["event"] == "presence.owner_expired" for line in logs)


async def test_an_error_reading_ownership_skips_the_whole_pass(redis_client, keys):
    await online(redis_client, keys, ("h_a", 1), ("h_b", 1))
    await redis_client.set(keys.owner("h_b"), b"not an owner record")  # unreadable
    stats = Stats()
    with capture_logs() as logs:
        result = await reconciler(redis_client, keys, stats=stats).run_pass()
    assert result.result == "error"
    assert await appended(redis_client, keys) == []  # not even for h_a: fail open
    assert stats.get("relay_presence_reconcile_total", result="error") == 1
    assert any(line["event"] == "presence.reconcile_skipped" for line in logs)


async def test_a_host_held_under_a_newer_epoch_is_left_to_its_connect_event(redis_client, keys):
    await online(redis_client, keys, ("h_a", 1))
    await OwnershipStore(redis_client, keys).claim("h_a", "m-new", TTL_MS)  # epoch 1 ...
    await OwnershipStore(redis_client, keys).claim("h_a", "m-new", TTL_MS)  # ... then 2
    result = await reconciler(redis_client, keys).run_pass()
    assert result.expired == []


async def test_one_machine_at_a_time_holds_the_lease(redis_client, keys):
    await online(redis_client, keys, ("h_a", 1))
    first = reconciler(redis_client, keys, machine="m1")
    second = reconciler(redis_client, keys, machine="m2")
    assert (await first.run_pass()).result == "ok"
    assert (await second.run_pass()).result == "not_leader"
    await first.close()  # releases the lease at once
    assert (await second.run_pass()).result == "ok"
    await second.close()


async def test_a_tunnel_that_reports_its_own_end_while_settling_is_not_guessed(redis_client, keys):
    await online(redis_client, keys, ("h_a", 1))
    store = PresenceStore(redis_client, keys)
    settled: list[float] = []

    async def own_report_lands_while_settling(seconds: float) -> None:
        settled.append(seconds)
        await store.apply(
            [("9-0", Disconnected(host_id="h_a", machine_id="m-dead", epoch=1, reason="closed"))]
        )

    r = reconciler(redis_client, keys, settle=0.3, sleep=own_report_lands_while_settling)
    result = await r.run_pass()
    assert settled == [0.3]  # it did wait to settle before acting
    assert result.expired == []
    assert await appended(redis_client, keys) == []


async def test_the_schedule_runs_passes_until_closed(redis_client, keys):
    await online(redis_client, keys, ("h_a", 1))
    r = reconciler(redis_client, keys, interval=0.05)
    r.start()
    try:
        for _ in range(100):
            if await appended(redis_client, keys):
                break
            await asyncio.sleep(0.02)
        assert [e.reason for e in await appended(redis_client, keys)][:1] == ["owner_expired"]
    finally:
        await r.close()
    assert await redis_client.get(keys.lease("presence-reconciler")) is None
