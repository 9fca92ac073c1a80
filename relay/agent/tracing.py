"""The agent's span for one upstream call (see :mod:`relay.tracing`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from relay.tracing import carry, start_client_span

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from relay.agent.http_client import UpstreamPool
    from relay.wire.protocol import ReqHead

__all__ = ["upstream_span"]


def upstream_span(tracer: Tracer, head: ReqHead, pool: UpstreamPool) -> tuple[Span, ReqHead]:
    """A CLIENT span for ``head`` sent to ``pool``'s service, child of the relay's span.

    Returns it with ``head`` whose headers name it as the upstream's parent.
    """
    target = head.target if head.target == "*" else pool.prefix + head.target
    scheme = "https" if pool.ssl is not None else "http"
    span = start_client_span(
        tracer,
        head.method,
        f"{scheme}://{pool.host_header}{target}",
        pool.host,
        pool.port,
        head.trace,
        head.headers,
    )
    headers = list(head.headers)
    carry(span, headers)
    return span, msgspec.structs.replace(head, headers=headers)
