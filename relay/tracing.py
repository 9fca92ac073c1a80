"""OpenTelemetry traces, on only when OTLP export is configured (decided once at startup).

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set,
:func:`configure_tracing` builds the SDK the standard way: every ``OTEL_*`` variable the
SDK reads applies (sampler, batch processor, exporter headers, timeout, compression,
resource), spans go out over OTLP/HTTP protobuf from a batch processor's thread, and
``TRACING.tracer`` is set. Otherwise it stays None, and a hot path pays one attribute
check per request (``if TRACING.tracer is not None``) and nothing else.

The relay makes a SERVER span per client request, a child of the client's W3C
``traceparent`` when one came, and sends its own ``traceparent`` on (to the agent in the
request head and its headers, to a peer machine when forwarding); the agent makes a
CLIENT span for the upstream call, a child of the relay's, and sends the upstream its
own ``traceparent``. Without tracing nothing is rewritten: the client's headers travel
unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from opentelemetry.trace import (
    SpanKind,
    StatusCode,
    get_current_span,
    set_span_in_context,
    use_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay import __version__
from relay.errors import ConfigError
from relay.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "CLIENT_ERRORS",
    "SERVER_ERRORS",
    "TRACING",
    "Tracing",
    "carry",
    "carry_current",
    "child_span",
    "configure_tracing",
    "failed",
    "lookup_span",
    "record_status",
    "request_span",
    "server_address",
    "shutdown_tracing",
    "start_client_span",
    "start_server_span",
    "tracing_wanted",
]

# Statuses that make a span an error (OTel HTTP conventions): a server's own failures,
# every failure a client sees.
SERVER_ERRORS: Final = 500
CLIENT_ERRORS: Final = 400

_TRACEPARENT: Final = "traceparent"
_TRACESTATE: Final = "tracestate"
_TRACE_HEADERS: Final = frozenset({_TRACEPARENT, _TRACESTATE})
_W3C: Final = TraceContextTextMapPropagator()
_PROTOCOL: Final = "http/protobuf"


class Tracing:
    """Whether spans are made, and the tracer making them (None: tracing is off)."""

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.tracer: Tracer | None = None
        self.provider: TracerProvider | None = None


TRACING: Final = Tracing()


# -- set-up --------------------------------------------------------------------------------


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard ``OTEL_*`` variables ask for traces over OTLP/HTTP.

    Off without an endpoint, with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.
    Raises :class:`ConfigError` for what this build cannot do (another exporter or
    protocol, an endpoint that is not an http(s) URL) rather than dropping spans silently.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
    if not endpoint:
        return False
    if exporter not in {"", "otlp"}:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: only 'otlp' (or 'none') is built in")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        or _PROTOCOL
    )
    if protocol != _PROTOCOL:
        raise ConfigError(
            f"OTLP protocol {protocol!r} is not supported: traces are exported as {_PROTOCOL}"
        )
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"OTLP endpoint {endpoint!r} must be an http:// or https:// URL")
    return True


def configure_tracing(default_service: str) -> bool:
    """Turn tracing on if the environment asks for it (once, at startup); returns whether.

    ``default_service`` is ``service.name`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name another.
    """
    if not tracing_wanted(os.environ):
        return False
    # Imported here: the exporter pulls in requests and protobuf, which an untraced
    # process never needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import (  # noqa: PLC0415
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # Resource.create() lets explicit attributes win over the environment's; ours are
    # defaults, so the environment's are laid over them.
    defaults = {SERVICE_NAME: default_service, SERVICE_VERSION: __version__}
    resource = Resource.create(defaults | dict(OTELResourceDetector().detect().attributes))
    exporter = OTLPSpanExporter()  # endpoint, headers, timeout, TLS: from OTEL_EXPORTER_OTLP_*
    provider = TracerProvider(resource=resource)  # sampler and limits: from OTEL_*
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    TRACING.provider = provider
    TRACING.tracer = provider.get_tracer("relay", __version__)
    get_logger("tracing").info(
        "tracing.enabled",
        service=resource.attributes.get(SERVICE_NAME),
        endpoint=_traces_url(os.environ),
    )
    return True


def _traces_url(environ: Mapping[str, str]) -> str:
    """Where spans go, as the exporter resolves it (OTLP spec), without any credentials."""
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not url:
        url = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/") + "/v1/traces"
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


async def shutdown_tracing() -> None:
    """Export the spans still queued and stop the exporter (at exit, after a drain).

    Bounded by the exporter's own timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s) per
    batch; run in a thread, so the loop is not blocked meanwhile.
    """
    provider = TRACING.provider
    if provider is not None:
        await asyncio.to_thread(provider.shutdown)


# -- spans ---------------------------------------------------------------------------------


def _parent(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The remote parent a W3C ``traceparent`` names (None: a new trace)."""
    if not traceparent:
        return None
    carrier = {_TRACEPARENT: traceparent}
    if tracestate:
        carrier[_TRACESTATE] = tracestate
    return _W3C.extract(carrier)


def server_address(host: str) -> tuple[str, int | None]:
    """A Host header split into ``server.address`` and ``server.port``."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not name.endswith(":"):  # not a bare IPv6 address
        return name, int(port)
    return host, None


def _server_attributes(
    method: str, target: str, host: str, slug: str, machine_id: str
) -> dict[str, str | int]:
    address, port = server_address(host)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.path": target.partition("?")[0],
        "server.address": address,
        "relay.host.slug": slug,
        "relay.machine_id": machine_id,
    }
    if port is not None:
        attributes["server.port"] = port
    return attributes


def start_server_span(
    tracer: Tracer,
    method: str,
    target: str,
    host: str,
    slug: str,
    machine_id: str,
    traceparent: str | None,
    tracestate: str | None,
) -> Span:
    """The relay's span for one client request, a child of the client's ``traceparent``."""
    return tracer.start_span(
        f"HTTP {method}",
        _parent(traceparent, tracestate),
        SpanKind.SERVER,
        _server_attributes(method, target, host, slug, machine_id),
    )


@contextlib.contextmanager
def request_span(
    tracer: Tracer,
    method: str,
    target: str,
    host: str,
    slug: str,
    machine_id: str,
    headers: Mapping[str, str],
) -> Iterator[Span]:
    """:func:`start_server_span` as the current span (the slow path's coroutines).

    An exception leaving the block is recorded on the span, which then ends.
    """
    with tracer.start_as_current_span(
        f"HTTP {method}",
        _parent(headers.get(_TRACEPARENT), headers.get(_TRACESTATE)),
        SpanKind.SERVER,
        _server_attributes(method, target, host, slug, machine_id),
    ) as span:
        yield span


def child_span(
    name: str, attributes: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[object]:
    """A child of the current span, current in its block (nothing when tracing is off)."""
    tracer = TRACING.tracer
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(name, attributes=attributes)


def within(span: Span | None) -> contextlib.AbstractContextManager[object]:
    """Make ``span`` current in the block (its children's parent) without ending it."""
    if span is None:
        return contextlib.nullcontext()
    return use_span(span, end_on_exit=False)


def lookup_span(operation: str) -> contextlib.AbstractContextManager[object]:
    """A ``directory.lookup`` span (``directory.operation``: what was looked up)."""
    return child_span("directory.lookup", {"directory.operation": operation})


def start_client_span(
    tracer: Tracer,
    method: str,
    url: str,
    address: str,
    port: int,
    traceparent: str,
    headers: list[tuple[str, str]],
) -> Span:
    """The agent's span for one upstream call, a child of the relay's ``traceparent``."""
    tracestate = None
    if traceparent:
        for name, value in headers:
            if len(name) == 10 and name.lower() == _TRACESTATE:
                tracestate = value
    return tracer.start_span(
        f"HTTP {method}",
        _parent(traceparent, tracestate),
        SpanKind.CLIENT,
        {
            "http.request.method": method,
            "url.full": url,
            "server.address": address,
            "server.port": port,
        },
    )


def record_status(span: Span, status: int, error_from: int) -> None:
    """The response status, and an error status from ``error_from`` up."""
    span.set_attribute("http.response.status_code", status)
    if status >= error_from:
        span.set_attribute("error.type", str(status))
        span.set_status(StatusCode.ERROR)


def failed(span: Span, error_type: str, description: str) -> None:
    """The request failed without a status of its own (reset, cut off, unreachable)."""
    span.set_attribute("error.type", error_type)
    span.set_status(StatusCode.ERROR, description)


# -- propagation ---------------------------------------------------------------------------


def carry(span: Span, headers: list[tuple[str, str]]) -> str:
    """Make ``headers`` name ``span`` as the parent (in place); returns its traceparent.

    The client's ``traceparent``/``tracestate`` are replaced, not added to: the next hop
    must see one parent.
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, set_span_in_context(span))
    headers[:] = [(k, v) for k, v in headers if k.lower() not in _TRACE_HEADERS]
    headers.extend(carrier.items())
    return carrier.get(_TRACEPARENT, "")


def carry_current(headers: list[tuple[str, str]], traceparent: str) -> str:
    """:func:`carry` for the current span when tracing is on; else ``traceparent`` as is."""
    if TRACING.tracer is None:
        return traceparent
    span = get_current_span()
    if not span.get_span_context().is_valid:
        return traceparent
    return carry(span, headers)
