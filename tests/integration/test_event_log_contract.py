"""One contract for every event log: the Redis Stream and the in-memory list."""

from __future__ import annotations

import msgspec
import pytest

from directory.errors import InvalidInput
from directory.events import (
    KINDS,
    Connected,
    Disconnected,
    HostRegistered,
    MachineStarted,
    MemoryEventLog,
    RedisEventLog,
    encode_event,
    parse_entry_id,
)
from directory.stats import Stats


@pytest.fixture(params=["memory", "redis"])
async def log_factory(request, redis_client, keys):
    """Builds a log of the backend under test: ``make(maxlen=..., stats=...)``."""

    def make(maxlen=10_000, stats=None):
        stats = stats or Stats()
        if request.param == "memory":
            return MemoryEventLog(maxlen=maxlen, stats=stats)
        return RedisEventLog(redis_client, keys, maxlen=maxlen, stats=stats)

    return make


def ev(i: int) -> Connected:
    return Connected(
        host_id=f"h_{i:016x}", machine_id="m1", epoch=i, remote_addr="1.2.3.4", agent_version="v"
    )


def ids_increase(ids):
    keys = [parse_entry_id(i) for i in ids]
    return keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_append_returns_increasing_ids_and_read_returns_events_in_order(log_factory):
    log = log_factory()
    events = [ev(1), ev(2), ev(3), ev(4)]
    first = await log.append(events[0])
    rest = await log.append_many(events[1:])
    ids = [first, *rest]
    assert ids_increase(ids)
    got = await log.read(None, 100)
    assert [i for i, _ in got] == ids
    assert [e for _, e in got] == events


async def test_events_round_trip_exactly_with_kind_version_and_time(log_factory):
    log = log_factory()
    events = [
        HostRegistered(host_id="h_1", slug="abc", name="n", at=1.5),
        Disconnected(host_id="h_1", machine_id="m", epoch=2, reason="missed_pong", at=2.25),
        MachineStarted(machine_id="m", address="http://x"),
    ]
    await log.append_many(events)
    assert [e for _, e in await log.read(None, 10)] == events


async def test_read_after_is_exclusive_and_limit_bounds_the_page(log_factory):
    log = log_factory()
    ids = await log.append_many([ev(i) for i in range(10)])
    page = await log.read(ids[2], 3)
    assert [i for i, _ in page] == ids[3:6]
    assert await log.read(ids[-1], 10) == []


async def test_read_page_reports_how_far_it_scanned(log_factory):
    log = log_factory()
    ids = await log.append_many([ev(i) for i in range(3)])
    page = await log.read_page(ids[0], 10)
    assert page.last_id == ids[-1]
    empty = await log.read_page(ids[-1], 10)
    assert empty.events == [] and empty.last_id is None


async def test_empty_log_reads_empty_and_reports_zero_length(log_factory):
    log = log_factory()
    assert await log.read(None, 5) == []
    info = await log.info()
    assert (info.length, info.entries_added, info.first_id, info.complete) == (0, 0, None, True)


async def test_unknown_kinds_are_skipped_counted_and_still_advance_the_cursor(log_factory):
    stats = Stats()
    log = log_factory(stats=stats)
    assert "teleported" not in KINDS
    a = await log.append(ev(1))
    (unknown,) = await log.append_raw([("teleported", b'{"kind":"teleported","where":"mars"}')])
    c = await log.append(ev(3))
    page = await log.read_page(None, 10)
    assert [i for i, _ in page.events] == [a, c]
    assert stats.get("relay_events_unknown_skipped_total") == 1
    only_unknown = await log.read_page(a, 1)
    assert only_unknown.events == [] and only_unknown.last_id == unknown


async def test_a_newer_version_of_a_known_kind_with_extra_fields_still_decodes(log_factory):
    log = log_factory()
    body = msgspec.json.encode({**msgspec.to_builtins(ev(7)), "version": 2, "tunnel_region": "ams"})
    await log.append_raw([("connected", body)])
    ((_, event),) = await log.read(None, 1)
    assert event.version == 2 and event.epoch == 7


async def test_corrupt_entries_of_known_kinds_are_skipped_and_counted(log_factory):
    stats = Stats()
    log = log_factory(stats=stats)
    await log.append_raw([("connected", b"{not json"), ("connected", encode_event(ev(1)))])
    assert [e.epoch for _, e in await log.read(None, 10)] == [1]
    assert stats.get("relay_events_corrupt_skipped_total") == 1


async def test_the_log_is_bounded_by_maxlen_and_knows_it_was_trimmed(log_factory):
    log = log_factory(maxlen=100)
    for start in range(0, 1000, 100):
        await log.append_many([ev(i) for i in range(start, start + 100)])
    info = await log.info()
    # Redis trims approximately (whole nodes), never below maxlen.
    assert 100 <= info.length < 400
    assert info.entries_added == 1000 and not info.complete
    events = await log.read(None, 10_000)
    assert events[-1][1].epoch == 999
    assert len(events) == info.length


async def test_bad_cursors_and_limits_are_invalid_input(log_factory):
    log = log_factory()
    for after in ("yesterday", "1-2-3", "-1", ""):
        with pytest.raises(InvalidInput):
            await log.read(after, 10)
    for limit in (0, -1, 10_001):
        with pytest.raises(InvalidInput):
            await log.read(None, limit)


async def test_an_id_without_sequence_is_accepted_as_a_cursor(log_factory):
    log = log_factory()
    ids = await log.append_many([ev(1)])
    ms = ids[0].split("-")[0]
    assert await log.read(str(int(ms) - 1), 10) != []


async def test_append_many_of_nothing_appends_nothing(log_factory):
    log = log_factory()
    assert await log.append_many([]) == []
    assert (await log.info()).length == 0
