"""Header rules at the proxy boundary (pure): hop-by-hop, forwarding, internal headers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "HOP_BY_HOP",
    "INTERNAL_PREFIXES",
    "headers_for_peer",
    "is_websocket_upgrade",
    "request_headers_for_upstream",
    "response_headers_for_client",
    "websocket_protocols",
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
# Set by the relay itself; a client's copy would be a spoof. Every X-Forwarded-* goes, not
# only the three the relay sets: an upstream may trust X-Forwarded-Port or -Prefix too.
_FORWARDING: Final = frozenset({"forwarded", "x-real-ip"})
_FORWARDING_PREFIX: Final = "x-forwarded-"
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


# Fly's proxy sets these (Fly-Client-IP, Fly-Forwarded-Port, fly-replay-src, ...) or obeys
# them (fly-replay, fly-force-instance-id): from a client they are spoofs, from an upstream
# they would steer the proxy.
FLY_PREFIX: Final = "fly-"

_REQUEST_PREFIXES: Final = (*INTERNAL_PREFIXES, _FORWARDING_PREFIX, FLY_PREFIX)
_REQUEST_PREFIXES_TRUSTING_FLY: Final = (*INTERNAL_PREFIXES, _FORWARDING_PREFIX)
_REQUEST_DROP: Final = HOP_BY_HOP | _FORWARDING | {"host"}
_WEBSOCKET_DROP: Final = _REQUEST_DROP | _WS_HANDSHAKE
_RESPONSE_DROP: Final = HOP_BY_HOP
_RESPONSE_DROP_LENGTH: Final = HOP_BY_HOP | {"content-length"}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


def _end_to_end(
    headers: list[tuple[str, str]], drop: frozenset[str], prefixes: tuple[str, ...]
) -> list[tuple[str, str]]:
    out = []
    extra: frozenset[str] | None = None
    for name, value in headers:
        low = name.lower()
        if low in drop or low.startswith(prefixes):
            if low == "connection" and extra is None:
                # Headers the Connection header names are hop-by-hop too (rare: a second
                # pass only when there is one).
                extra = _connection_tokens(headers)
            continue
        out.append((name, value))
    if extra:
        out = [(n, v) for n, v in out if n.lower() not in extra]
    return out


def request_headers_for_upstream(
    headers: list[tuple[str, str]],
    *,
    client_ip: str,
    proto: str,
    host: str,
    trust_fly_headers: bool = False,
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """Client request headers as the agent's upstream should see them.

    Hop-by-hop, forwarding and internal headers from the client are dropped, and Fly's
    own headers unless Fly set them (``trust_fly_headers``: behind Fly's proxy, which
    overwrites a client's copies); ``Host`` is left for the agent to set to its upstream;
    ``X-Forwarded-*`` say who really asked. ``websocket``: the handshake headers go too
    (the agent redoes the handshake with its own key).
    """
    prefixes = _REQUEST_PREFIXES_TRUSTING_FLY if trust_fly_headers else _REQUEST_PREFIXES
    out = _end_to_end(headers, _WEBSOCKET_DROP if websocket else _REQUEST_DROP, prefixes)
    out.append(("X-Forwarded-For", client_ip))
    out.append(("X-Forwarded-Proto", proto))
    out.append(("X-Forwarded-Host", host))
    return out


_RESPONSE_PREFIXES: Final = (*INTERNAL_PREFIXES, FLY_PREFIX)


def response_headers_for_client(
    headers: list[tuple[str, str]], *, keep_length: bool = True
) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop, internal and Fly control ones.

    ``keep_length=False`` drops Content-Length too, for bodies whose length the server
    framework sets itself.
    """
    drop = _RESPONSE_DROP if keep_length else _RESPONSE_DROP_LENGTH
    return _end_to_end(headers, drop, _RESPONSE_PREFIXES)


_PEER_PREFIXES: Final = (*INTERNAL_PREFIXES, "sec-websocket")


def headers_for_peer(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Client request headers as forwarded to the machine holding the tunnel.

    ``Host`` stays (the peer routes by it), and so do forwarding headers (the peer applies
    its own rules); hop-by-hop, internal and WebSocket handshake headers go (the HTTP
    client redoes the handshake).
    """
    return _end_to_end(headers, HOP_BY_HOP, _PEER_PREFIXES)


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    """Whether a request asks to become a WebSocket (``Upgrade: websocket``)."""
    return headers.get("Upgrade", "").lower() == "websocket"


def websocket_protocols(headers: Mapping[str, str]) -> list[str]:
    """The subprotocols a WebSocket request offers (``Sec-WebSocket-Protocol``), in order."""
    return [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
