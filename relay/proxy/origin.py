"""Who really sent a client request, and whether it already took its one hop (pure).

Only what is proven is trusted: a peer relay's hop marker counts when it carries the
cluster secret; Fly's client headers count only with ``--trust-fly-headers`` (behind
Fly's proxy, Fly sets them and a client's copy is overwritten).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AUTH", "CLIENT_IP", "HOP", "PROTO", "Origin", "resolve_origin"]

HOP: Final = "X-Relay-Hop"
AUTH: Final = "X-Relay-Auth"
CLIENT_IP: Final = "X-Relay-Client-IP"
PROTO: Final = "X-Relay-Proto"


class Origin:
    """Who really asked, and whether the request already took its one hop."""

    # A plain class, not a dataclass: compiled (relay/hot_path.py), a dataclass keeps the
    # interpreted __init__ that dataclasses generates, on every request.
    __slots__ = ("client_ip", "hopped", "proto", "via_machine")

    def __init__(self, *, client_ip: str, proto: str, hopped: bool, via_machine: bool) -> None:
        self.client_ip = client_ip
        self.proto = proto
        self.hopped = hopped
        self.via_machine = via_machine  # forwarded by a peer relay (authenticated)


def resolve_origin(
    header: Callable[[str], str | None],
    *,
    peer: str,
    scheme: str,
    cluster_secret: str,
    trust_fly_headers: bool,
) -> Origin:
    """The request's origin; ``header(name)`` looks a request header up (any case)."""
    hop = header(HOP)
    if hop is not None and cluster_secret:
        auth = header(AUTH) or ""
        if hmac.compare_digest(auth.encode(), cluster_secret.encode()):
            return Origin(
                client_ip=header(CLIENT_IP) or "",
                proto=header(PROTO) or "http",
                hopped=True,
                via_machine=True,
            )
    proto = scheme
    if trust_fly_headers:
        # Behind Fly's proxy these are set by Fly, not by the client.
        peer = header("Fly-Client-IP") or peer
        proto = header("X-Forwarded-Proto") or proto
    return Origin(
        client_ip=peer,
        proto=proto,
        hopped=header("fly-replay-src") is not None,
        via_machine=False,
    )
