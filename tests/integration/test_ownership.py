"""Ownership in a real store: fencing epochs, newest wins, compare-and-* Lua scripts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from redis.asyncio.cluster import RedisCluster
from structlog.testing import capture_logs

from directory.errors import CorruptRecord, DirectoryError, Superseded
from directory.models import OwnerRecord, TakeoverNotice, encode
from directory.ownership import BATCH_SIZE, OwnershipStore, Reasserted
from directory.store import is_cluster
from tests.servers import wait_for

TTL = 30_000


async def _subscribers(client, channel: str) -> int:
    """Subscribers of ``channel``; in a cluster, on the node its subscription goes to."""
    if is_cluster(client):  # a node counts only its own subscribers
        where = {"target_nodes": client.get_node_from_key(channel)}
    else:
        where = {}
    return dict(await client.pubsub_numsub(channel, **where)).get(channel.encode(), 0)


@pytest.fixture
def redis_client(contract_client):
    """Every test here is the ownership contract: held by Valkey and by fakeredis alike."""
    return contract_client


@pytest.fixture
def ownership(redis_client, keys):
    return OwnershipStore(redis_client, keys)


async def test_claims_get_strictly_increasing_epochs(ownership):
    epochs = [await ownership.claim("h_1", f"m{i}", TTL) for i in range(3)]
    assert epochs == [1, 2, 3]
    assert await ownership.owner("h_1") == OwnerRecord("m2", 3)


async def test_claim_stores_exactly_the_encoded_record_with_a_native_ttl(
    ownership, redis_client, keys
):
    epoch = await ownership.claim("h_1", 'm"1\\é', 5_000)
    assert await redis_client.get(keys.owner("h_1")) == encode(OwnerRecord('m"1\\é', epoch))
    assert 0 < await redis_client.pttl(keys.owner("h_1")) <= 5_000


async def test_newest_claim_wins_and_is_announced(ownership):
    notices: list[TakeoverNotice] = []

    async def watch():
        async for notice in ownership.takeovers():
            notices.append(notice)

    watcher = asyncio.create_task(watch())
    try:
        channel = ownership._keys.owner_channel()

        async def subscribed():
            return await _subscribers(ownership._redis, channel)

        await wait_for(subscribed, what="the takeover subscription")
        first = await ownership.claim("h_1", "m1", TTL)
        second = await ownership.claim("h_1", "m2", TTL)
        await wait_for(lambda: len(notices) == 2, what="two takeover notices")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert second > first
    assert notices == [TakeoverNotice("h_1", "m1", first), TakeoverNotice("h_1", "m2", second)]
    assert await ownership.owner("h_1") == OwnerRecord("m2", second)


async def test_a_malformed_takeover_notice_is_logged_and_skipped(ownership, redis_client, keys):
    received: asyncio.Queue[TakeoverNotice] = asyncio.Queue()

    async def watch():
        async for notice in ownership.takeovers():
            await received.put(notice)

    with capture_logs() as logs:
        watcher = asyncio.create_task(watch())
        try:
            channel = keys.owner_channel()

            async def subscribed():
                return await _subscribers(redis_client, channel)

            await wait_for(subscribed, what="the takeover subscription")
            await redis_client.publish(channel, b"not json")
            epoch = await ownership.claim("h_1", "m1", TTL)
            notice = await asyncio.wait_for(received.get(), timeout=5)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    assert notice == TakeoverNotice("h_1", "m1", epoch)
    assert received.empty()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "ownership.bad_takeover_notice"
    ]


async def test_an_older_epoch_cannot_refresh_a_newer_owner(ownership, redis_client, keys):
    old = await ownership.claim("h_1", "m1", TTL)
    new = await ownership.claim("h_1", "m2", 1_000)
    assert await ownership.refresh([("h_1", old)], "m1", 60_000) == ["h_1"]
    assert await redis_client.pttl(keys.owner("h_1")) <= 1_000
    assert await ownership.owner("h_1") == OwnerRecord("m2", new)


async def test_the_same_epoch_from_another_machine_is_not_the_owner(ownership):
    epoch = await ownership.claim("h_1", "m1", TTL)
    assert await ownership.refresh([("h_1", epoch)], "m2", TTL) == ["h_1"]
    assert await ownership.release("h_1", "m2", epoch) is False
    assert await ownership.owner("h_1") == OwnerRecord("m1", epoch)


async def test_an_older_epoch_cannot_release_a_newer_owner(ownership):
    old = await ownership.claim("h_1", "m1", TTL)
    new = await ownership.claim("h_1", "m2", TTL)
    assert await ownership.release("h_1", "m1", old) is False
    assert await ownership.owner("h_1") == OwnerRecord("m2", new)
    assert await ownership.release("h_1", "m2", new) is True
    assert await ownership.owner("h_1") is None
    assert await ownership.release("h_1", "m2", new) is False


async def test_refresh_extends_the_ttl_of_records_still_ours(ownership, redis_client, keys):
    epoch = await ownership.claim("h_1", "m1", 1_000)
    assert await redis_client.pttl(keys.owner("h_1")) <= 1_000
    assert await ownership.refresh([("h_1", epoch)], "m1", 60_000) == []
    assert await redis_client.pttl(keys.owner("h_1")) > 50_000


async def test_an_owner_key_expires_on_its_own_and_then_refresh_reports_it_lost(
    ownership, redis_client, keys
):
    started = time.monotonic()
    epoch = await ownership.claim("h_1", "m1", 200)
    assert await ownership.owner("h_1") is not None

    async def gone():
        return await redis_client.exists(keys.owner("h_1")) == 0

    await wait_for(gone, timeout=3, what="the owner key to expire")
    assert time.monotonic() - started >= 0.15
    assert await ownership.owner("h_1") is None
    assert await ownership.refresh([("h_1", epoch)], "m1", TTL) == ["h_1"]
    assert await ownership.owner("h_1") is None, "refresh must never recreate a record"


async def test_refreshing_1200_hosts_is_one_round_trip(valkey_client, keys, round_trips):
    # Round trips are the real server's business: Valkey only.
    redis_client = valkey_client
    ownership = OwnershipStore(valkey_client, keys)
    owned = [(f"h_{i:04d}", i + 1) for i in range(1200)]
    assert await ownership.reassert(owned, "m1", 1_000) == Reasserted(
        reclaimed={h: e + 1 for h, e in owned}
    )
    owned = [(h, e + 1) for h, e in owned]
    # Someone else took host 1100 (in the third batch): refresh must name exactly it.
    stolen = owned[1100][0]
    await redis_client.set(keys.owner(stolen), encode(OwnerRecord("m2", 5000)), px=TTL)
    cluster = is_cluster(redis_client)
    everywhere = {"target_nodes": RedisCluster.PRIMARIES} if cluster else {}
    await redis_client.config_resetstat(**everywhere)

    before = round_trips.count
    lost = await ownership.refresh(owned, "m1", 60_000)
    round_trips.check(redis_client, before, 1)

    assert lost == [stolen]
    stats = await redis_client.info("commandstats", **everywhere)
    per_node = list(stats.values()) if cluster else [stats]
    calls = sum(s.get("cmdstat_evalsha", {}).get("calls", 0) for s in per_node)
    if cluster:  # a script names keys of one slot: one call per slot the hosts fall in
        assert calls == len({redis_client.keyslot(keys.owner(h)) for h, _ in owned})
    else:
        assert calls == -(-len(owned) // BATCH_SIZE) == 3
    assert not any("cmdstat_eval" in s for s in per_node)
    for host_id, _ in owned[::199]:
        assert await redis_client.pttl(keys.owner(host_id)) > 50_000
    assert await redis_client.pttl(keys.owner(stolen)) <= TTL


async def test_scripts_still_work_after_the_store_forgets_them(ownership, redis_client):
    epoch = await ownership.claim("h_1", "m1", TTL)
    await redis_client.script_flush()
    assert await ownership.refresh([("h_1", epoch)], "m1", TTL) == []
    await redis_client.script_flush()
    assert await ownership.reassert([("h_1", epoch)], "m1", TTL) == Reasserted()
    await redis_client.script_flush()
    newer = await ownership.claim("h_1", "m2", TTL)
    await redis_client.script_flush()
    assert await ownership.release("h_1", "m2", newer) is True


async def test_reassert_after_flushall_reclaims_under_new_epochs_and_keeps_fencing(
    ownership, redis_client, keys
):
    owned = [("h_a", await ownership.claim("h_a", "m1", TTL)) for _ in range(3)]
    owned = [owned[-1], ("h_b", await ownership.claim("h_b", "m1", TTL))]
    # A store that restarted empty: no keys, no scripts.
    await redis_client.flushall()
    await redis_client.script_flush()

    result = await ownership.reassert(owned, "m1", 5_000)

    assert result.lost == []
    # Each missing record is ours again under an epoch newer than any handed out before.
    assert result.reclaimed == {host_id: epoch + 1 for host_id, epoch in owned}
    for host_id, epoch in result.reclaimed.items():
        assert await ownership.owner(host_id) == OwnerRecord("m1", epoch)
        assert 0 < await redis_client.pttl(keys.owner(host_id)) <= 5_000
        assert int(await redis_client.get(keys.epoch(host_id))) == epoch
    # The new epoch refreshes and releases like a claimed one.
    assert await ownership.refresh(list(result.reclaimed.items()), "m1", TTL) == []
    # A new connection after recovery must outrank the reclaimed one.
    assert await ownership.claim("h_a", "m2", TTL) > result.reclaimed["h_a"]


async def test_reassert_of_an_expired_record_takes_a_new_epoch(ownership, redis_client, keys):
    epoch = await ownership.claim("h_1", "m1", TTL)
    await redis_client.delete(keys.owner("h_1"))  # expired while the machine was cut off
    result = await ownership.reassert([("h_1", epoch)], "m1", TTL)
    assert result == Reasserted(reclaimed={"h_1": epoch + 1})
    assert await ownership.owner("h_1") == OwnerRecord("m1", epoch + 1)
    # The old epoch no longer matches: it can neither refresh nor release the record.
    assert await ownership.refresh([("h_1", epoch)], "m1", TTL) == ["h_1"]
    assert await ownership.release("h_1", "m1", epoch) is False
    assert await ownership.release("h_1", "m1", epoch + 1) is True


async def test_reassert_extends_our_records_and_reports_the_ones_lost(
    ownership, redis_client, keys
):
    ours = await ownership.claim("h_ours", "m1", 1_000)
    old = await ownership.claim("h_taken", "m1", TTL)
    await ownership.claim("h_taken", "m2", TTL)
    result = await ownership.reassert([("h_ours", ours), ("h_taken", old)], "m1", 60_000)
    assert result == Reasserted(lost=["h_taken"])
    assert await redis_client.pttl(keys.owner("h_ours")) > 50_000
    assert (await ownership.owner("h_taken")).machine_id == "m2"


async def test_reassert_does_not_resurrect_an_epoch_a_newer_connection_replaced(ownership, keys):
    old = await ownership.claim("h_1", "m1", TTL)
    newer = await ownership.claim("h_1", "m2", TTL)
    assert await ownership.release("h_1", "m2", newer)
    # The key is gone, but the counter shows a newer connection happened: ours is stale.
    assert await ownership.reassert([("h_1", old)], "m1", TTL) == Reasserted(lost=["h_1"])
    assert await ownership.owner("h_1") is None


async def test_claim_refuses_to_overwrite_a_newer_epoch_and_repairs_the_counter(
    ownership, redis_client, keys
):
    # A store that lost the counter but not the owner (e.g. a failover losing writes).
    await redis_client.set(keys.owner("h_1"), encode(OwnerRecord("m9", 100)), px=TTL)
    with pytest.raises(Superseded) as caught:
        await ownership.claim("h_1", "m1", TTL)
    assert (caught.value.machine_id, caught.value.epoch) == ("m9", 100)
    assert caught.value.http_status == 409
    assert await ownership.owner("h_1") == OwnerRecord("m9", 100)
    assert await ownership.claim("h_1", "m1", TTL) == 101


async def test_owners_reads_many_hosts_in_one_round_trip(valkey_client, keys, round_trips):
    ownership = OwnershipStore(valkey_client, keys)  # round trips: the real server only
    a = await ownership.claim("h_a", "m1", TTL)
    b = await ownership.claim("h_b", "m2", TTL)
    before = round_trips.count
    owners = await ownership.owners(["h_a", "h_b", "h_none"])
    round_trips.check(valkey_client, before, 1)
    assert owners == {"h_a": OwnerRecord("m1", a), "h_b": OwnerRecord("m2", b), "h_none": None}
    assert await ownership.owners([]) == {}


async def test_a_corrupt_owner_value_raises_a_directory_error(ownership, redis_client, keys):
    await redis_client.set(keys.owner("h_1"), b"{not json")
    with pytest.raises(CorruptRecord) as caught:
        await ownership.owner("h_1")
    assert isinstance(caught.value, DirectoryError)
    assert keys.owner("h_1") in str(caught.value)
    with pytest.raises(CorruptRecord):
        await ownership.owners(["h_1"])


async def test_a_nonpositive_ttl_is_refused(ownership):
    with pytest.raises(ValueError, match="TTL"):
        await ownership.claim("h_1", "m1", 0)


async def test_reassert_repeated_after_a_lost_reply_reports_the_same_reclaim(
    ownership, redis_client, keys
):
    # A pipeline resent after its reply was lost, or a pass whose replies never arrived:
    # the same reassert runs again and must not take our own new record for a stranger's.
    epoch = await ownership.claim("h_1", "m1", TTL)
    await redis_client.delete(keys.owner("h_1"))
    first = await ownership.reassert([("h_1", epoch)], "m1", TTL)
    again = await ownership.reassert([("h_1", epoch)], "m1", 60_000)
    assert first == again == Reasserted(reclaimed={"h_1": epoch + 1})
    assert await ownership.owner("h_1") == OwnerRecord("m1", epoch + 1)
    assert await redis_client.pttl(keys.owner("h_1")) > 50_000  # the rerun extended it
    # Another machine's newer claim is still someone else's, note or no note.
    newer = await ownership.claim("h_1", "m2", TTL)
    assert await ownership.reassert([("h_1", epoch)], "m1", TTL) == Reasserted(lost=["h_1"])
    assert await ownership.owner("h_1") == OwnerRecord("m2", newer)
