"""Listening sockets: ``[::]`` means both IPv6 and IPv4 (dual stack).

asyncio binds ``::`` as IPv6 only, so a relay listening on ``[::]:8080`` would refuse
IPv4 clients, and one on ``0.0.0.0`` refuses IPv6 peers (Fly's private network is IPv6).
"""

from __future__ import annotations

import socket

__all__ = ["listening_socket"]


def listening_socket(host: str, port: int, *, backlog: int = 1024) -> socket.socket | None:
    """A bound, listening socket for the wildcard IPv6 host (dual stack), else None.

    None: let the event loop bind ``host`` itself (one address family).
    """
    if host not in {"::", ""}:
        return None
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(backlog)
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own positional flag
    except OSError:
        sock.close()
        raise
    return sock
