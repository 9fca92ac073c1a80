"""The relay's Prometheus text and its access log, on the objects themselves."""

from __future__ import annotations

import asyncio
import io
import json
import re

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from relay.machine.access_log import FLUSH_INTERVAL, AccessLog
from relay.machine.metrics import (
    _DURATION_BUCKETS,
    STORE_OPS,
    DurationHistogram,
    Metrics,
    render_prometheus,
)
from tests.promql import samples


def test_every_series_is_relay_prefixed_without_scope_labels_or_target_info():
    hosts = {"aaaa1111": 3, "bbbb2222": 5}
    metrics = Metrics(tunnels_current=lambda: 2, host_requests=lambda: list(hosts.items()))
    try:
        metrics.requests_by_status[200] += 4
        metrics.request_bytes += 1000
        metrics.response_bytes += 250
        metrics.request_duration.observe(0.01)
        text = render_prometheus().decode()
        lines = text.splitlines()
        names = {re.split(r"[{ ]", line)[0] for line in lines if not line.startswith("#")}
        names |= {line.split()[2] for line in lines if line.startswith("#")}
        assert all(n.startswith("relay_") for n in names), sorted(names)
        assert "otel_scope" not in text
        assert "target_info" not in text
        got = samples(text)
        assert got['relay_requests_total{status="200"}'] == 4
        assert got["relay_request_bytes_total"] == 1000
        assert got["relay_response_bytes_total"] == 250
        assert got["relay_tunnels_current"] == 2
        assert got['relay_host_requests_total{host="aaaa1111"}'] == 3
        for op in STORE_OPS:
            assert got[f'relay_store_errors_total{{op="{op}"}}'] == 0
        assert got['relay_drains_cut_short_total{cause="busy"}'] == 0
        assert "relay_process_resident_memory_bytes" in got
        # A host that leaves takes its series along.
        del hosts["aaaa1111"]
        got = samples(render_prometheus().decode())
        assert not any("aaaa1111" in name for name in got)
        assert got['relay_host_requests_total{host="bbbb2222"}'] == 5
    finally:
        metrics.shutdown()


def test_per_host_series_only_when_asked_for():
    metrics = Metrics(tunnels_current=lambda: 0)
    try:
        assert "relay_host_requests_total" not in render_prometheus().decode()
    finally:
        metrics.shutdown()


async def test_access_log_lines_are_json_buffered_and_flushed_in_one_write():
    out = io.BytesIO()
    log = AccessLog("m-1", asyncio.get_running_loop(), out)
    for status in (200, 404):
        log.record(
            request_id=None if status == 200 else "abc",
            host="k3x9q2ab",
            method="POST",
            target="/upload?token=secret&x=1",
            status=status,
            seconds=0.0012345,
            request_bytes=10,
            response_bytes=20,
            client="203.0.113.7",
        )
    assert out.getvalue() == b""  # buffered
    await asyncio.sleep(FLUSH_INTERVAL * 3)
    lines = out.getvalue().decode().splitlines()
    assert out.getvalue().endswith(b"\n")
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "timestamp": first["timestamp"],
        "level": "info",
        "event": "proxy.access",
        "machine": "m-1",
        "request_id": None,
        "host": "k3x9q2ab",
        "method": "POST",
        "path": "/upload",
        "status": 200,
        "duration_ms": 1.234,
        "request_bytes": 10,
        "response_bytes": 20,
        "client": "203.0.113.7",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", first["timestamp"])
    assert (second["status"], second["request_id"]) == (404, "abc")
    log.flush()  # nothing left: writes nothing
    assert len(out.getvalue().decode().splitlines()) == 2


def test_the_duration_histogram_exports_what_prometheus_clients_would():
    # Side by side with prometheus_client's own Histogram (the one it replaced on the hot
    # path): the same values, bound values and values beyond every bound included.
    values = [0.0, 0.0004, 0.0005, 0.0006, 0.01, 1.0, 119.0, 120.0, 121.0, 5000.0]
    ours = DurationHistogram("relay_test_seconds", "test")
    registry = CollectorRegistry()
    registry.register(ours)
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "relay_test_seconds", "test", buckets=_DURATION_BUCKETS, registry=reference_registry
    )
    for value in values:
        ours.observe(value)
        reference.observe(value)
    got = samples(generate_latest(registry).decode())
    want = samples(generate_latest(reference_registry).decode())
    want.pop("relay_test_seconds_created")
    assert got == want
    assert got['relay_test_seconds_bucket{le="0.0005"}'] == 3
    assert got['relay_test_seconds_bucket{le="+Inf"}'] == got["relay_test_seconds_count"] == 10
