"""What tracing adds per request on the hot paths, off and on (timeit, one process).

Off: the statements tracing added to relay/proxy/exchange.py and relay/agent/exchange.py,
run as they run per request when ``TRACING.tracer`` is None (slot stores, the checks, the
agent's ``close`` override), against the same code without them.

On: the real helpers on the real SDK: the relay's server span (parent from the client's
traceparent, attributes, the traceparent carried into the forwarded headers, status,
end) and the agent's client span (the same, plus the head rebuilt with its headers),
with a BatchSpanProcessor whose exporter encodes each batch to OTLP protobuf as the
real exporter does, and drops it instead of posting it; and the relay's span for a
request whose parent was not sampled (non-recording: what sampling leaves).

    python -m loadtest.tracing_cost [--number 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
import timeit
from typing import TYPE_CHECKING

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from relay.agent.http_client import UpstreamPool
from relay.agent.tracing import upstream_span
from relay.logs import get_logger
from relay.tracing import (
    CLIENT_ERRORS,
    SERVER_ERRORS,
    TRACING,
    carry,
    record_status,
    start_server_span,
)
from relay.wire.protocol import ReqHead

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Tracer

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = TRACEPARENT[:-2] + "00"  # a parent that was not sampled: nor are we
HEADERS = [
    ("User-Agent", "curl/8.5.0"),
    ("Accept", "*/*"),
    ("traceparent", TRACEPARENT),
    ("X-Forwarded-For", "127.0.0.1"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "abcd1234.localhost:8080"),
]
WANTED = {b"host": "abcd1234.localhost:8080", b"traceparent": TRACEPARENT}


class EncodingExporter(SpanExporter):
    """Encodes each batch as OTLPSpanExporter does; sends nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializePartialToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


# -- off: the added statements as they run per request -------------------------------------


class Stream:
    __slots__ = ("close_span", "span")

    def close(self) -> None:
        pass


class TracedStream(Stream):
    __slots__ = ()

    def close(self) -> None:  # the agent's override
        if self.close_span is not None:
            self.close_span.end()
            self.close_span = None
        super().close()


def relay_off(x: Stream) -> None:
    x.span = None  # __init__
    tracer = TRACING.tracer  # start()
    if tracer is not None:
        raise AssertionError
    trace = WANTED.get(b"traceparent", "") if x.span is None else ""  # start(): the choice
    if x.span is not None:  # on_head
        raise AssertionError
    if x.span is not None:  # _finish
        raise AssertionError
    del trace


def agent_off(x: Stream) -> None:
    x.close_span = None  # __init__
    tracer = TRACING.tracer
    if tracer is not None:
        raise AssertionError
    if x.close_span is not None:  # upstream_head
        raise AssertionError


def relay_baseline(x: Stream) -> None:
    trace = WANTED.get(b"traceparent", "")
    del trace, x


def agent_baseline(x: Stream) -> None:
    del x


# -- on: the helpers on the real SDK --------------------------------------------------------


def relay_on(tracer, traceparent: str = TRACEPARENT) -> None:
    span = start_server_span(
        tracer,
        "GET",
        "/index.html?x=1",
        WANTED[b"host"],
        "abcd1234",
        "m1",
        traceparent,
        WANTED.get(b"tracestate"),
    )
    carry(span, list(HEADERS))
    record_status(span, 200, SERVER_ERRORS)
    span.end()


def agent_on(tracer, pool: UpstreamPool, head: ReqHead) -> None:
    span, _head = upstream_span(tracer, head, pool)
    record_status(span, 200, CLIENT_ERRORS)
    span.end()


def per_call_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def on_cost(fn: Callable[[Tracer], None], number: int) -> tuple[float, float, int]:
    """CPU µs per request making the spans, and with the batch thread's encoding too."""
    exporter = EncodingExporter()
    provider = TracerProvider()
    # A queue that holds them all (a dropped span would cost nothing to export), and a
    # worker that sleeps until the shutdown: making and encoding are timed apart.
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=number,
        max_export_batch_size=number,
        schedule_delay_millis=3_600_000,
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("relay")
    start = time.process_time()  # every thread of the process
    for _ in range(number):
        fn(tracer)
    made = time.process_time() - start
    provider.shutdown()  # exports what is still queued
    total = time.process_time() - start
    return made / number * 1e6, total / number * 1e6, exporter.spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, r = args.number, args.repeat
    assert TRACING.tracer is None

    base, traced = Stream(), TracedStream()
    traced.close_span = None
    off_relay = per_call_us(lambda: relay_off(base), n * 10, r) - per_call_us(
        lambda: relay_baseline(base), n * 10, r
    )
    off_agent = per_call_us(lambda: agent_off(base), n * 10, r) - per_call_us(
        lambda: agent_baseline(base), n * 10, r
    )
    off_close = per_call_us(traced.close, n * 10, r) - per_call_us(base.close, n * 10, r)

    pool = UpstreamPool("http://127.0.0.1:3000", limit=1, log=get_logger("bench"))
    head = ReqHead(1, "GET", "/index.html?x=1", list(HEADERS), trace=TRACEPARENT)
    relay = on_cost(relay_on, n)
    agent = on_cost(lambda tracer: agent_on(tracer, pool, head), n)
    unsampled, _, _ = on_cost(lambda tracer: relay_on(tracer, UNSAMPLED), n)

    print(f"tracing cost per request; off: timeit, best of {r}; on: CPU time of {n} requests")
    print(f"  off, relay (exchange.py checks)      : {off_relay * 1000:5.0f} ns")
    print(f"  off, agent (checks, close override)  : {(off_agent + off_close) * 1000:5.0f} ns")
    for name, (made, total, exported) in (("relay", relay), ("agent", agent)):
        print(
            f"  on,  {name}: {made:5.1f} us making the span (start, carry, status, end),"
            f" {total:5.1f} us with its OTLP encoding ({exported} spans)"
        )
    print(f"  on,  relay, request not sampled: {unsampled:5.1f} us (propagation only)")


if __name__ == "__main__":
    main()
