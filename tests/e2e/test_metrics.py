"""End-to-end: a live relay's /metrics after proxied traffic, --per-host-metrics, --access-log,
and the series deploy/ (alert rules, dashboard) reads.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess

import aiohttp
import httpx
import pytest

from tests.e2e.harness import METRICS_TOKEN, free_port, wait_until
from tests.promql import alert_expressions, dashboard_expressions, metric_names, promtool, samples

pytestmark = pytest.mark.e2e

UPLOAD = 100_000  # streamed through the tunnel (over the 16 KiB inline limit)
SMALL = 1_000  # inline in the request head frame
DOWNLOAD = 300_000


async def scrape(relay) -> str:
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(
            f"{relay.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
    assert r.status_code == 200, r.text
    return r.text


def sample_names(text: str) -> set[str]:
    return {re.split(r"[{ ]", series, maxsplit=1)[0] for series in samples(text)}


def families(text: str) -> dict[str, str]:
    """Metric family name -> its TYPE."""
    return {
        m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    }


async def connected(cluster, upstream, **env):
    relay = await cluster.relay(**env)
    host = await relay.add_host("web")
    cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    return relay, host


async def traffic(relay, slug: str) -> tuple[int, int]:
    """HTTP (fast path and aiohttp path) and WebSocket traffic; returns the body bytes
    (client to host, host to client) it moved.
    """
    sent = received = 0
    async with relay.client(slug) as c:
        r = await c.post("/digest", content=b"u" * UPLOAD)
        assert r.json()["size"] == UPLOAD
        sent, received = sent + UPLOAD, received + len(r.content)
        r = await c.post("/digest", content=b"s" * SMALL)
        sent, received = sent + SMALL, received + len(r.content)
        r = await c.get(f"/download?size={DOWNLOAD}")
        assert len(r.content) == DOWNLOAD
        received += DOWNLOAD
        # The relay's own route first: the connection is handed to aiohttp, so the next
        # request for the host takes the aiohttp path.
        assert (await c.get("/healthz", headers={"Host": "127.0.0.1"})).status_code == 200
        r = await c.post("/digest", content=b"a" * UPLOAD)
        assert r.json()["size"] == UPLOAD
        sent, received = sent + UPLOAD, received + len(r.content)
    headers = {"Host": f"{slug}.localhost:{relay.port}"}
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{relay.url}/ws", headers=headers) as ws,
    ):
        await ws.send_str("hello")  # 5 bytes; the echo is "echo:hello", 10
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"\x00" * 2000)
        assert len((await ws.receive()).data) == 2005
    return sent + 5 + 2000, received + 10 + 2005


async def bytes_counted(relay) -> tuple[float, float]:
    values = samples(await scrape(relay))
    return values["relay_request_bytes_total"], values["relay_response_bytes_total"]


async def test_metrics_are_relay_prefixed_and_count_the_body_bytes(cluster, upstream):
    relay, host = await connected(cluster, upstream)
    before = await bytes_counted(relay)
    sent, received = await traffic(relay, host["slug"])
    want = (before[0] + sent, before[1] + received)

    seen: list[tuple[float, float]] = []

    async def counted() -> bool:
        seen.append(await bytes_counted(relay))
        return seen[-1] == want

    # A WebSocket is counted once its proxy task has ended, just after the close.
    try:
        await wait_until(counted, timeout=5, what=f"byte counters at {want}")
    except AssertionError as exc:
        raise AssertionError(f"counted {seen[-1]}, want {want} (from {before})") from exc
    text = await scrape(relay)
    names = sample_names(text)
    assert len(names) > 20
    stray = sorted(n for n in names | set(families(text)) if not n.startswith("relay_"))
    assert not stray, stray
    assert "otel_scope" not in text
    assert "target_info" not in text
    assert "relay_host_requests_total" not in names  # only with --per-host-metrics
    assert "relay_process_resident_memory_bytes" in names
    assert '"proxy.access"' not in relay.proc.log()  # only with --access-log


async def test_per_host_metrics_and_the_access_log(cluster, upstream):
    relay, host = await connected(
        cluster, upstream, RELAY_PER_HOST_METRICS="true", RELAY_ACCESS_LOG="true"
    )
    slug = host["slug"]
    before = await relay.metric("relay_host_requests_total", host=slug)
    async with relay.client(slug) as c:
        for _ in range(3):
            assert (await c.get("/hello")).status_code == 200
        r = await c.post(
            "/digest?token=secret", content=b"x" * 1234, headers={"X-Request-Id": "client-id-1"}
        )
        assert r.status_code == 200
    assert await relay.metric("relay_host_requests_total", host=slug) == before + 4

    line = await wait_until(
        lambda: _access_line(relay, lambda e: e["request_id"] == "client-id-1"),
        timeout=5,
        what="the access-log line of the POST",
    )
    assert line["event"] == "proxy.access"
    assert line["level"] == "info"
    assert line["machine"] == relay.machine_id
    assert line["host"] == slug
    assert line["method"] == "POST"
    assert line["path"] == "/digest"  # the query string (it may carry secrets) left out
    assert line["status"] == 200
    assert line["request_bytes"] == 1234
    assert line["response_bytes"] == len(r.content)
    assert line["client"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line["timestamp"])

    # The host goes: its series goes with it, and its requests are logged with the id
    # of the relay's own error answer.
    async with relay.api() as api:
        assert (await api.delete(f"/api/hosts/{host['id']}")).status_code == 204

    async def series_gone() -> bool:
        return "relay_host_requests_total" not in sample_names(await scrape(relay))

    await wait_until(series_gone, timeout=5, what="the removed host's series to go")
    async with relay.client(slug) as c:
        r = await c.get("/hello")
    assert r.status_code == 404
    error_id = r.headers["X-Request-Id"]
    line = await wait_until(
        lambda: _access_line(relay, lambda e: e["request_id"] == error_id),
        timeout=5,
        what="the access-log line of the 404",
    )
    assert (line["status"], line["host"], line["path"]) == (404, slug, "/hello")


def _access_line(relay, match) -> dict | None:
    for text in relay.proc.log().splitlines():
        if '"proxy.access"' in text:
            entry = json.loads(text)  # every access-log line is one JSON object
            if match(entry):
                return entry
    return None


async def test_every_series_deploy_reads_is_exported_by_a_live_relay(cluster, upstream):
    relay, host = await connected(cluster, upstream, RELAY_PER_HOST_METRICS="true")
    await traffic(relay, host["slug"])
    # A malformed request, so the proxy-error counter has a series too.
    with socket.create_connection(("127.0.0.1", relay.port)) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    text = await scrape(relay)
    exported = sample_names(text)
    types = families(text)
    used: dict[str, str] = {}
    for expr in alert_expressions() + dashboard_expressions():
        for name in metric_names(expr):
            used.setdefault(name, expr)
    assert len(used) >= 15
    missing = {name: expr for name, expr in used.items() if name not in exported}
    assert not missing, missing
    for name in used:
        # A series named <family>_bucket/_sum/_count belongs to a histogram, <family>_total
        # to a counter; anything else is its own family.
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and types.get(base) == "histogram":
            continue
        family = name.removesuffix("_total") if name.endswith("_total") else name
        assert types.get(name) or types.get(family), (name, types)
        if name.endswith("_total"):
            assert "counter" in {types.get(name), types.get(family)}, name
    # Prometheus's own parser and linter read the whole exposition (the request-duration
    # histogram is the relay's own collector, not prometheus_client's).
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_drain_cut_short_is_counted_before_the_relay_exits(cluster, upstream):
    port = free_port()
    relay, host = await connected(
        cluster, upstream, RELAY_DRAIN_TIMEOUT="0.5", RELAY_METRICS_LISTEN=f"127.0.0.1:{port}"
    )
    series = 'relay_drains_cut_short_total{cause="busy"}'
    seen: list[float] = []
    async with (
        relay.client(host["slug"]) as client,
        client.stream("GET", "/slow") as slow,  # 40 s of ticks: outlasts the drain window
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as c,
    ):
        assert slow.status_code == 200
        seen.append(samples((await c.get("/metrics")).text)[series])
        # One machine: nothing to move to, so the drain waits for the request alone,
        # which outlasts the window.
        relay.proc.signal(signal.SIGTERM)
        while relay.proc.returncode() is None and seen[-1] == 0:
            try:
                seen.append(samples((await c.get("/metrics")).text)[series])
            except httpx.HTTPError:
                break  # the listener closed: the process is on its way out
    assert seen[0] == 0
    assert seen[-1] == 1, seen
    assert await relay.proc.wait_exit() == 0
    assert '"relay.drain_window_exceeded"' in relay.proc.log()
