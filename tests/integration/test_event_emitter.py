"""The relay's event outbox against a real Valkey that goes away and comes back.

The outage tests stop and restart their own embedded (single) server; the others run on
both stores.
"""

from __future__ import annotations

from structlog.testing import capture_logs

from directory.embedded import EmbeddedValkey
from directory.events import Connected, RedisEventLog
from directory.keys import Keys
from directory.stats import Stats
from directory.store import connect
from relay.machine.events import EventEmitter, disconnect_reason
from relay.wire.protocol import CloseCode
from tests.servers import wait_for


def ev(i: int) -> Connected:
    return Connected(
        host_id="h_1", machine_id="m1", epoch=i, remote_addr="1.2.3.4", agent_version="v"
    )


def test_close_codes_map_to_disconnect_reasons():
    assert disconnect_reason(CloseCode.MISSED_PONG) == "missed_pong"
    assert disconnect_reason(CloseCode.DRAIN) == "drain"
    assert disconnect_reason(CloseCode.REPLACED) == "replaced"
    assert disconnect_reason(CloseCode.UNAUTHORIZED) == "removed"
    for other in (CloseCode.NORMAL, CloseCode.PROTOCOL_ERROR, 1006, 1011, None):
        assert disconnect_reason(other) == "closed"


async def test_emitted_events_reach_the_log_in_order(redis_client, keys):
    stats = Stats()
    log = RedisEventLog(redis_client, keys, stats=stats)
    emitter = EventEmitter(log, stats=stats, batch=7)
    emitter.start()
    for i in range(50):
        emitter.emit(ev(i))
    assert await emitter.flush(5)
    await emitter.close()
    assert [e.epoch for _, e in await log.read(None, 100)] == list(range(50))
    assert stats.get("relay_events_emitted_total") == 50
    assert stats.get("relay_events_dropped_total") == 0


async def test_the_outbox_survives_a_store_outage_counts_overflow_and_flushes_on_recovery(tmp_path):
    server = EmbeddedValkey(tmp_path / "store")
    client = await connect(await server.start())
    stats = Stats()
    log = RedisEventLog(client, Keys("t"), stats=stats)
    emitter = EventEmitter(log, capacity=8, stats=stats)
    emitter.start()
    try:
        with capture_logs() as logs:
            emitter.emit(ev(0))
            assert await emitter.flush(5)
            await server.stop()
            for i in range(1, 11):  # 10 events into room for 8: the 2 oldest go, counted
                emitter.emit(ev(i))
            await wait_for(
                lambda: stats.get("relay_events_flush_errors_total") >= 1,
                timeout=10,
                what="failure",
            )
            assert emitter.pending == 8
            assert stats.get("relay_events_dropped_total", reason="overflow") == 2
            server = EmbeddedValkey(tmp_path / "store")  # same data dir, same socket
            await server.start()
            await wait_for(lambda: emitter.pending == 0, timeout=15, what="outbox flushed")
        assert [e.epoch for _, e in await log.read(None, 100)] == [0, *range(3, 11)]
        names = [line["event"] for line in logs]
        assert "events.outbox_flush_failed" in names
        assert "events.outbox_recovered" in names
        dropped = [line for line in logs if line["event"] == "events.dropped"]
        assert sum(line["dropped"] for line in dropped) == 2
    finally:
        await emitter.close()
        await client.aclose()
        await server.stop()


async def test_what_cannot_be_flushed_by_shutdown_is_counted_and_logged(tmp_path):
    server = EmbeddedValkey(tmp_path / "store")
    client = await connect(await server.start())
    await server.stop()
    stats = Stats()
    emitter = EventEmitter(RedisEventLog(client, Keys("t"), stats=stats), stats=stats)
    emitter.start()
    try:
        with capture_logs() as logs:
            for i in range(3):
                emitter.emit(ev(i))
            await emitter.close(timeout=0.2)
            emitter.emit(ev(99))  # after close: still never silent
        assert stats.get("relay_events_dropped_total", reason="shutdown") == 3
        assert stats.get("relay_events_dropped_total", reason="closed") == 1
        assert {line.get("reason") for line in logs if line["event"] == "events.dropped"} == {
            "shutdown",
            "closed",
        }
    finally:
        await client.aclose()
