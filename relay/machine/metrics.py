"""OpenTelemetry metrics with a Prometheus text endpoint; every series is ``relay_*``.

Hot-path counts (requests by status, body bytes) are plain integers summed in place and
read by observable instruments at scrape time: an OTel ``Counter.add`` costs ~9 µs, an
integer increment a few dozen nanoseconds. The request-duration histogram is recorded on
every request, and OTel's ``Histogram.record`` costs ~6 µs (prometheus_client's
``Histogram.observe`` ~0.7 µs): it is :class:`DurationHistogram`, bucket counts in a list,
a collector of the same registry. Rare events use ordinary OTel counters.

The registry is the relay's own, not prometheus_client's default one: that one would add
unprefixed ``process_*``, ``python_gc_*`` and ``python_info`` series. The process figures
are kept, as ``relay_process_*``. The README's "Metrics" table lists every series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from itertools import accumulate
from typing import TYPE_CHECKING, Final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import HistogramMetricFamily

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric

__all__ = ["DRAIN_CUT_CAUSES", "STORE_OPS", "Metrics", "render_prometheus"]

_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

#: The ``op`` labels of ``relay_store_errors_total`` (each exported from the start at 0).
STORE_OPS = ("refresh", "release", "subscribe")
#: The ``cause`` labels of ``relay_drains_cut_short_total``: requests still running when
#: the drain window ended, or agents that had not moved to another machine.
DRAIN_CUT_CAUSES = ("busy", "not_moved")

_REGISTRY = CollectorRegistry()
ProcessCollector(namespace="relay", registry=_REGISTRY)


class Metrics:
    """Every metric the relay process exports.

    ``host_requests`` (``--per-host-metrics``) lists (slug, requests) of the hosts whose
    tunnels this machine holds, read at each scrape: a host that leaves takes its series
    with it.
    """

    def __init__(
        self,
        *,
        tunnels_current: Callable[[], int],
        host_requests: Callable[[], Iterable[tuple[str, int]]] | None = None,
    ) -> None:
        # Scope labels (otel_scope_name/version/schema_url on every series, exporter
        # 0.64b0 and later) only repeat the one meter's name; target_info would be the one
        # series not named relay_*, and Prometheus' own job/instance labels already say
        # which process a series is from. Both are constructor options of the reader.
        self._reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=_REGISTRY
        )
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            resource=Resource.create({SERVICE_NAME: "relay"}),
        )
        meter = self._provider.get_meter("relay")
        self.meter = meter  # other modules register their own instruments on it
        self.requests_by_status: Tally[int] = Tally()
        # Body bytes of proxied requests (HTTP bodies, WebSocket payloads), summed by the
        # proxy as each request or WebSocket ends.
        self.request_bytes = 0
        self.response_bytes = 0
        self._tunnels_current = tunnels_current
        self._host_requests = host_requests
        meter.create_observable_counter(
            "relay_requests_total",
            callbacks=[self._observe_requests],
            description="Client requests answered, by HTTP status",
        )
        meter.create_observable_up_down_counter(
            "relay_tunnels_current",
            callbacks=[self._observe_tunnels],
            description="Tunnels held by this machine",
        )
        self.watch(
            "relay_request_bytes_total",
            lambda: self.request_bytes,
            "Body bytes clients sent through this machine's tunnels (WebSocket payloads too)",
            counter=True,
        )
        self.watch(
            "relay_response_bytes_total",
            lambda: self.response_bytes,
            "Body bytes hosts sent back through this machine's tunnels (WebSocket payloads too)",
            counter=True,
        )
        if host_requests is not None:
            meter.create_observable_counter(
                "relay_host_requests_total",
                callbacks=[self._observe_hosts],
                description="Requests that reached a host's tunnel on this machine, by slug",
            )
        self.request_duration = _histogram(
            "relay_request_duration_seconds",
            "Time from a client request's arrival until its response is handed to the client",
        )
        self.tunnel_rtt = _histogram(
            "relay_tunnel_rtt_seconds",
            "Round trips of the relay's pings to its agents and back (one per answered ping)",
        )
        self.tunnel_closes = meter.create_counter(
            "relay_tunnel_closes_total", description="Tunnels closed, by close code"
        )
        self.protocol_errors = meter.create_counter(
            "relay_protocol_errors_total",
            description="Tunnels closed, or tunnel handshakes refused, for protocol errors",
        )
        self.proxy_errors = meter.create_counter(
            "relay_proxy_errors_total", description="Requests that failed inside the relay"
        )
        self.replays = meter.create_counter(
            "relay_replay_total",
            description="Requests answered with fly-replay to the owning machine",
        )
        self.forwards = meter.create_counter(
            "relay_forward_total", description="Requests forwarded to the owning machine"
        )
        self.store_errors = meter.create_counter(
            "relay_store_errors_total", description="Directory operations that failed, by op"
        )
        self.drains_cut_short = meter.create_counter(
            "relay_drains_cut_short_total",
            description="Drains whose window ended first, by cause: busy, not_moved",
        )
        # Zero from the start: a rate or an alert needs a series before the first event.
        self.replays.add(0)
        self.forwards.add(0)
        for cause in DRAIN_CUT_CAUSES:
            self.drains_cut_short.add(0, {"cause": cause})
        for op in STORE_OPS:
            self.store_errors.add(0, {"op": op})

    def watch(
        self, name: str, read: Callable[[], float], description: str, *, counter: bool = False
    ) -> None:
        """Export ``read()`` at each scrape, as a gauge (or a monotonic counter)."""

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read())]

        create = (
            self.meter.create_observable_counter if counter else self.meter.create_observable_gauge
        )
        create(name, callbacks=[observe], description=description)

    def _observe_requests(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"status": str(s)}) for s, n in self.requests_by_status.items()]

    def _observe_tunnels(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._tunnels_current())]

    def _observe_hosts(self, _options: CallbackOptions) -> Iterable[Observation]:
        assert self._host_requests is not None  # noqa: S101 - registered only with it
        return [Observation(n, {"host": slug}) for slug, n in self._host_requests()]

    def shutdown(self) -> None:
        """Stop the provider (its reader detaches its collector from the registry)."""
        self._provider.shutdown()


class DurationHistogram:
    """A Prometheus histogram of durations (the buckets above), exported at scrape time.

    Recorded on every request: a bisect and two additions (~0.15 µs), where
    prometheus_client's ``Histogram.observe`` takes a lock and ~0.7 µs. The exposition is
    the same: cumulative ``_bucket`` series, ``_count`` and ``_sum``.
    """

    __slots__ = ("_counts", "_sum", "description", "name")

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self._counts = [0] * (len(_DURATION_BUCKETS) + 1)  # the last: above every bound
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self._counts[bisect_left(_DURATION_BUCKETS, seconds)] += 1
        self._sum += seconds

    def collect(self) -> Iterable[Metric]:
        """The histogram as Prometheus reads it (the registry calls this at each scrape)."""
        cumulative = list(accumulate(self._counts))
        yield HistogramMetricFamily(
            self.name,
            self.description,
            buckets=list(zip(_BUCKET_LABELS, cumulative, strict=True)),
            sum_value=self._sum,
        )


#: Each bucket's ``le`` label as prometheus_client writes it ("0.0005", "1.0", "+Inf").
_BUCKET_LABELS: Final = (*(str(float(bound)) for bound in _DURATION_BUCKETS), "+Inf")

_histograms: dict[str, DurationHistogram] = {}


def _histogram(name: str, description: str) -> DurationHistogram:
    # One per name in the registry; one process may build Metrics more than once (tests),
    # so reuse the first.
    if name not in _histograms:
        histogram = DurationHistogram(name, description)
        _REGISTRY.register(histogram)
        _histograms[name] = histogram
    return _histograms[name]


def render_prometheus() -> bytes:
    """Prometheus text exposition of every metric of this process."""
    return generate_latest(_REGISTRY)
