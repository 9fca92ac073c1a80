"""End-to-end traces: relay and agent export to a real OTLP/HTTP receiver in the test.

One trace must run client -> relay SERVER span -> agent CLIENT span -> the upstream's
received traceparent; without OTEL variables nothing is exported or rewritten.
"""

from __future__ import annotations

import gzip
import secrets
import signal
import zlib
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.harness import wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Received:
    service: str
    span: Span

    def attr(self, key: str):
        for kv in self.span.attributes:
            if kv.key == key:
                value = kv.value
                return getattr(value, value.WhichOneof("value"))
        return None


@dataclass
class Collector:
    """An OTLP/HTTP receiver on loopback: POST /v1/traces with ExportTraceServiceRequest."""

    spans: list[Received] = field(default_factory=list)
    posts: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        self.posts += 1
        for resource_spans in export.resource_spans:
            service = next(
                kv.value.string_value
                for kv in resource_spans.resource.attributes
                if kv.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(Received(service, span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def in_trace(self, trace_id: str) -> list[Received]:
        return [r for r in self.spans if r.span.trace_id.hex() == trace_id]


@pytest.fixture
async def collector():
    c = await Collector().start()
    yield c
    await c.stop()


def otel_env(collector: Collector, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def test_one_trace_runs_from_the_client_through_relay_and_agent_to_the_upstream(
    cluster, upstream, collector
):
    env = otel_env(collector)
    relay = await cluster.relay(**env)
    host = await relay.add_host("traced")
    cluster.agent(relay, host["token"], upstream.url, **env)
    await relay.wait_online(host["slug"])

    traceparent, trace_id, client_span = new_traceparent()
    async with relay.client(host["slug"]) as c:
        r = await c.get("/headers?q=1", headers={"traceparent": traceparent})
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    version, upstream_trace, upstream_parent, flags = seen["traceparent"].split("-")
    assert (version, upstream_trace, flags) == ("00", trace_id, "01")

    def both() -> bool:
        services = {r.service for r in collector.in_trace(trace_id)}
        return {"relay", "relay-agent"} <= services

    await wait_until(both, timeout=15, what="the relay's and the agent's spans")
    spans = collector.in_trace(trace_id)
    (server,) = [r for r in spans if r.service == "relay"]
    (client,) = [r for r in spans if r.service == "relay-agent"]

    assert server.span.kind == Span.SPAN_KIND_SERVER
    assert server.span.name == "HTTP GET"
    assert server.span.parent_span_id.hex() == client_span
    assert server.attr("http.request.method") == "GET"
    assert server.attr("url.path") == "/headers"
    assert server.attr("server.address") == f"{host['slug']}.localhost"
    assert server.attr("server.port") == relay.port
    assert server.attr("http.response.status_code") == 200
    assert server.attr("relay.host.slug") == host["slug"]
    assert server.attr("relay.machine_id") == relay.machine_id

    assert client.span.kind == Span.SPAN_KIND_CLIENT
    assert client.span.parent_span_id == server.span.span_id
    assert client.attr("http.request.method") == "GET"
    assert client.attr("url.full") == f"{upstream.url}/headers?q=1"
    assert client.attr("http.response.status_code") == 200

    # The upstream's parent is the agent's span: one chain, no invented hop.
    assert upstream_parent == client.span.span_id.hex()
    assert len({r.span.span_id for r in spans}) == 2


async def test_slow_path_requests_get_a_span_with_directory_lookups_as_children(cluster, collector):
    relay = await cluster.relay(**otel_env(collector))
    traceparent, trace_id, client_span = new_traceparent()
    async with relay.client("nosuchhost") as c:
        r = await c.get("/x", headers={"traceparent": traceparent})
    assert r.status_code == 404

    def server_span() -> Received | None:
        found = [
            r
            for r in collector.in_trace(trace_id)
            if r.span.kind == Span.SPAN_KIND_SERVER and r.service == "relay"
        ]
        return found[0] if found else None

    server = await wait_until(server_span, timeout=15, what="the 404's server span")
    assert server.span.parent_span_id.hex() == client_span
    assert server.attr("http.response.status_code") == 404
    assert server.attr("relay.host.slug") == "nosuchhost"
    lookups = [r for r in collector.in_trace(trace_id) if r.span.name == "directory.lookup"]
    assert lookups, [r.span.name for r in collector.in_trace(trace_id)]
    assert all(r.span.parent_span_id == server.span.span_id for r in lookups)
    assert {r.attr("directory.operation") for r in lookups} == {"resolve_slug"}


async def test_a_forwarded_request_continues_the_trace_on_the_machine_holding_the_tunnel(
    cluster, upstream, collector
):
    env = otel_env(collector)
    holder = await cluster.relay("--route-mode", "forward", machine_id="m0", **env)
    other = await cluster.relay("--route-mode", "forward", machine_id="m1", **env)
    host = await holder.add_host("far")
    cluster.agent(holder, host["token"], upstream.url, **env)
    await holder.wait_online(host["slug"])

    traceparent, trace_id, client_span = new_traceparent()
    async with other.client(host["slug"]) as c:
        answer = await c.get("/headers", headers={"traceparent": traceparent})
    assert answer.status_code == 200

    def servers() -> dict[str, Received] | None:
        found = {
            r.attr("relay.machine_id"): r
            for r in collector.in_trace(trace_id)
            if r.span.kind == Span.SPAN_KIND_SERVER
        }
        agent = [r for r in collector.in_trace(trace_id) if r.service == "relay-agent"]
        return found if {"m0", "m1"} <= found.keys() and agent else None

    found = await wait_until(servers, timeout=15, what="both machines' server spans")
    first, second = found["m1"], found["m0"]
    assert first.span.parent_span_id.hex() == client_span
    assert second.span.parent_span_id == first.span.span_id
    (agent,) = [r for r in collector.in_trace(trace_id) if r.service == "relay-agent"]
    assert agent.span.parent_span_id == second.span.span_id
    lookups = {
        r.attr("directory.operation")
        for r in collector.in_trace(trace_id)
        if r.span.name == "directory.lookup" and r.span.parent_span_id == first.span.span_id
    }
    assert lookups == {"resolve_slug", "owner", "machine"}
    upstream_parent = {k.lower(): v for k, v in answer.json()["headers"].items()}["traceparent"]
    assert upstream_parent.split("-")[2] == agent.span.span_id.hex()


async def test_spans_still_queued_are_flushed_when_the_relay_stops(cluster, collector):
    # A schedule delay far beyond the test: only the exit flush can deliver the span.
    relay = await cluster.relay(**otel_env(collector, OTEL_BSP_SCHEDULE_DELAY="600000"))
    traceparent, trace_id, _ = new_traceparent()
    async with relay.client("nosuchhost") as c:
        assert (await c.get("/", headers={"traceparent": traceparent})).status_code == 404
    assert not collector.in_trace(trace_id)
    relay.proc.signal(signal.SIGTERM)
    assert await relay.proc.wait_exit() == 0
    assert [r.service for r in collector.in_trace(trace_id) if r.span.kind == Span.SPAN_KIND_SERVER]
    assert "tracing.enabled" in relay.proc.log()


async def test_without_otel_variables_nothing_is_traced_or_rewritten(cluster, upstream, collector):
    relay = await cluster.relay()
    host = await relay.add_host("untraced")
    agent = cluster.agent(relay, host["token"], upstream.url)
    await relay.wait_online(host["slug"])
    traceparent, _, _ = new_traceparent()
    async with relay.client(host["slug"]) as c:
        sent = await c.get("/headers", headers={"traceparent": traceparent, "tracestate": "a=1"})
        bare = await c.get("/headers")
    seen = {k.lower(): v for k, v in sent.json()["headers"].items()}
    assert seen["traceparent"] == traceparent
    assert seen["tracestate"] == "a=1"
    assert "traceparent" not in {k.lower() for k in bare.json()["headers"]}
    for proc in (relay.proc, agent):
        assert "tracing.enabled" not in proc.log()


async def test_an_sdk_switched_off_exports_nothing(cluster, upstream, collector):
    # The endpoint is set but OTEL_SDK_DISABLED wins: after both processes exited (which
    # would flush anything queued) the receiver has seen nothing.
    env = otel_env(collector, OTEL_SDK_DISABLED="true")
    relay = await cluster.relay(**env)
    host = await relay.add_host("off")
    agent = cluster.agent(relay, host["token"], upstream.url, **env)
    await relay.wait_online(host["slug"])
    traceparent, _, _ = new_traceparent()
    async with relay.client(host["slug"]) as c:
        r = await c.get("/headers", headers={"traceparent": traceparent})
    assert {k.lower(): v for k, v in r.json()["headers"].items()}["traceparent"] == traceparent
    for proc in (agent, relay.proc):
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0
    assert collector.posts == 0
