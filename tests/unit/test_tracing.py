"""Tracing helpers (relay.tracing, relay.agent.tracing) on the real SDK, spans kept in memory."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, use_span

from relay import tracing
from relay.agent.http_client import UpstreamPool
from relay.agent.tracing import upstream_span
from relay.errors import ConfigError
from relay.logs import get_logger
from relay.tracing import (
    CLIENT_ERRORS,
    SERVER_ERRORS,
    TRACING,
    carry,
    carry_current,
    configure_tracing,
    lookup_span,
    record_status,
    server_address,
    start_client_span,
    start_server_span,
    tracing_wanted,
)
from relay.wire.protocol import ReqHead

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


@pytest.fixture
def restore_tracing():
    saved = TRACING.tracer, TRACING.provider
    yield
    if TRACING.provider is not None and TRACING.provider is not saved[1]:
        TRACING.provider.shutdown()
    TRACING.tracer, TRACING.provider = saved


def parse(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, parent_id, flags = traceparent.split("-")
    return version, trace_id, parent_id, flags


# -- switching on --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "5"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp"}, True),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            True,
        ),
    ],
)
def test_tracing_is_wanted_only_with_an_otlp_endpoint(env, wanted):
    assert tracing_wanted(env) is wanted


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "http/json"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "http://"),
    ],
)
def test_what_cannot_be_exported_is_refused_with_a_clear_error(env, message):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"} | env
    with pytest.raises(ConfigError, match=message):
        tracing_wanted(env)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:secret@c/otlp"}, "https://c/otlp/v1/traces"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/custom",
            },
            "http://t:1/custom",
        ),
    ],
)
def test_the_logged_endpoint_is_the_exporters_without_credentials(env, url):
    assert tracing._traces_url(env) == url


def test_without_an_endpoint_tracing_stays_off(monkeypatch, restore_tracing):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    TRACING.tracer = TRACING.provider = None
    assert configure_tracing("relay") is False
    assert TRACING.tracer is None


@pytest.mark.parametrize(("override", "service"), [(None, "relay"), ("edge-relay", "edge-relay")])
def test_service_name_defaults_per_process_and_otel_service_name_wins(
    monkeypatch, restore_tracing, override, service
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    if override is None:
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    else:
        monkeypatch.setenv("OTEL_SERVICE_NAME", override)
    assert configure_tracing("relay") is True
    assert TRACING.tracer is not None
    assert TRACING.provider is not None
    assert TRACING.provider.resource.attributes["service.name"] == service


# -- spans and propagation -----------------------------------------------------------------


def test_server_span_continues_the_clients_trace_with_http_attributes(spans):
    tracer, exporter = spans
    span = start_server_span(
        tracer, "POST", "/a/b?c=d", "abc.localhost:8080", "abc", "m1", TRACEPARENT, "k=v"
    )
    record_status(span, 201, SERVER_ERRORS)
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.name == "HTTP POST"
    assert done.kind == SpanKind.SERVER
    assert f"{done.context.trace_id:032x}" == TRACE_ID
    assert done.parent is not None
    assert f"{done.parent.span_id:016x}" == PARENT_ID
    assert done.context.trace_state.get("k") == "v"
    assert dict(done.attributes) == {
        "http.request.method": "POST",
        "url.path": "/a/b",
        "server.address": "abc.localhost",
        "server.port": 8080,
        "relay.host.slug": "abc",
        "relay.machine_id": "m1",
        "http.response.status_code": 201,
    }
    assert done.status.status_code == StatusCode.UNSET


@pytest.mark.parametrize(
    "traceparent", [None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"]
)
def test_no_usable_traceparent_starts_a_new_trace(spans, traceparent):
    tracer, exporter = spans
    start_server_span(tracer, "GET", "/", "h.localhost", "h", "m", traceparent, None).end()
    (done,) = exporter.get_finished_spans()
    assert done.parent is None
    assert done.context.trace_id != 0


@pytest.mark.parametrize(
    ("status", "error_from", "error"),
    [
        (404, SERVER_ERRORS, False),
        (503, SERVER_ERRORS, True),
        (404, CLIENT_ERRORS, True),
        (302, CLIENT_ERRORS, False),
    ],
)
def test_error_statuses_follow_the_span_kind(spans, status, error_from, error):
    tracer, exporter = spans
    span = tracer.start_span("s")
    record_status(span, status, error_from)
    span.end()
    (done,) = exporter.get_finished_spans()
    assert (done.status.status_code == StatusCode.ERROR) is error
    assert done.attributes.get("error.type") == (str(status) if error else None)


def test_carry_replaces_the_clients_trace_headers_with_the_span(spans):
    tracer, _ = spans
    span = start_server_span(tracer, "GET", "/", "h", "h", "m", TRACEPARENT, "k=v")
    headers = [("TraceParent", TRACEPARENT), ("Accept", "*/*"), ("TRACESTATE", "k=v")]
    sent = carry(span, headers)
    ctx = span.get_span_context()
    assert sent == f"00-{TRACE_ID}-{ctx.span_id:016x}-01"
    assert headers == [("Accept", "*/*"), ("traceparent", sent), ("tracestate", "k=v")]


def test_carry_current_is_a_no_op_while_tracing_is_off(restore_tracing):
    TRACING.tracer = None
    headers = [("traceparent", TRACEPARENT)]
    assert carry_current(headers, TRACEPARENT) == TRACEPARENT
    assert headers == [("traceparent", TRACEPARENT)]


def test_carry_current_names_the_current_span(spans, restore_tracing):
    tracer, _ = spans
    TRACING.tracer = tracer
    headers: list[tuple[str, str]] = []
    assert carry_current(headers, "client's") == "client's"  # no current span: unchanged
    span = tracer.start_span("s")
    with use_span(span, end_on_exit=True):
        sent = carry_current(headers, "client's")
    assert parse(sent)[2] == f"{span.get_span_context().span_id:016x}"
    assert headers == [("traceparent", sent)]


def test_lookup_spans_are_children_of_the_current_span_and_nothing_when_off(spans, restore_tracing):
    tracer, exporter = spans
    TRACING.tracer = None
    with lookup_span("owner") as nothing:
        assert nothing is None
    TRACING.tracer = tracer
    parent = tracer.start_span("request")
    with use_span(parent, end_on_exit=True), lookup_span("owner"):
        pass
    lookup, request = exporter.get_finished_spans()
    assert lookup.name == "directory.lookup"
    assert lookup.attributes["directory.operation"] == "owner"
    assert lookup.parent.span_id == request.context.span_id


def test_client_span_takes_its_tracestate_from_the_headers(spans):
    tracer, exporter = spans
    headers = [("tracestate", "relay=1"), ("traceparent", TRACEPARENT)]
    span = start_client_span(tracer, "GET", "http://u/x", "u", 80, TRACEPARENT, headers)
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.kind == SpanKind.CLIENT
    assert f"{done.parent.span_id:016x}" == PARENT_ID
    assert done.context.trace_state.get("relay") == "1"


def test_upstream_span_is_the_relays_child_and_the_upstreams_parent(spans):
    tracer, exporter = spans
    pool = UpstreamPool("http://127.0.0.1:3000/base/", limit=1, log=get_logger("test"))
    head = ReqHead(
        7, "PUT", "/x?y=1", [("traceparent", TRACEPARENT), ("X-A", "1")], trace=TRACEPARENT
    )
    span, sent = upstream_span(tracer, head, pool)
    span.end()
    (done,) = exporter.get_finished_spans()
    assert f"{done.parent.span_id:016x}" == PARENT_ID
    assert done.attributes["url.full"] == "http://127.0.0.1:3000/base/x?y=1"
    assert done.attributes["server.port"] == 3000
    assert sent.headers == [
        ("X-A", "1"),
        ("traceparent", f"00-{TRACE_ID}-{done.context.span_id:016x}-01"),
    ]
    assert (sent.sid, sent.method, sent.target, sent.trace) == (7, "PUT", "/x?y=1", TRACEPARENT)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("abc.localhost:8080", ("abc.localhost", 8080)),
        ("abc.example.com", ("abc.example.com", None)),
        ("[::1]:8080", ("[::1]", 8080)),
        ("::1", ("::1", None)),
        ("abc.localhost:", ("abc.localhost:", None)),
    ],
)
def test_server_address_splits_the_host_header(host, expected):
    assert server_address(host) == expected
