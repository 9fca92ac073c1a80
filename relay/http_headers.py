"""Header rules at the proxy boundary (pure): hop-by-hop, forwarding, internal headers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "HOP_BY_HOP",
    "INTERNAL_PREFIXES",
    "request_headers_for_upstream",
    "response_headers_for_client",
    "websocket_headers_for_upstream",
]

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the relay itself; a client's copy would be a spoof.
_FORWARDING: Final = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
)
# Machine-to-machine routing headers; from outside they are dropped.
INTERNAL_PREFIXES: Final = ("x-relay-",)
# The WebSocket handshake is redone by the agent with its own key.
_WS_HANDSHAKE: Final = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def _end_to_end(
    headers: list[tuple[str, str]], extra_drop: frozenset[str]
) -> list[tuple[str, str]]:
    drop = HOP_BY_HOP | extra_drop | _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if (low := name.lower()) not in drop and not low.startswith(INTERNAL_PREFIXES)
    ]


def request_headers_for_upstream(
    headers: list[tuple[str, str]], *, client_ip: str, proto: str, host: str
) -> list[tuple[str, str]]:
    """Client request headers as the agent's upstream should see them.

    Hop-by-hop, forwarding and internal headers from the client are dropped; ``Host`` is
    left for the agent to set to its upstream; ``X-Forwarded-*`` say who really asked.
    """
    out = _end_to_end(headers, _FORWARDING | {"host"})
    out.append(("X-Forwarded-For", client_ip))
    out.append(("X-Forwarded-Proto", proto))
    out.append(("X-Forwarded-Host", host))
    return out


def websocket_headers_for_upstream(
    headers: list[tuple[str, str]], *, client_ip: str, proto: str, host: str
) -> list[tuple[str, str]]:
    """Like :func:`request_headers_for_upstream`, minus the WebSocket handshake headers."""
    out = _end_to_end(headers, _FORWARDING | _WS_HANDSHAKE | {"host"})
    out.append(("X-Forwarded-For", client_ip))
    out.append(("X-Forwarded-Proto", proto))
    out.append(("X-Forwarded-Host", host))
    return out


_LENGTH: Final = frozenset({"content-length"})


def response_headers_for_client(
    headers: list[tuple[str, str]], *, keep_length: bool = True
) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop and internal ones.

    ``keep_length=False`` drops Content-Length too, for bodies whose length the server
    framework sets itself.
    """
    return _end_to_end(headers, frozenset() if keep_length else _LENGTH)
