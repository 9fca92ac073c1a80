"""What one request on the aiohttp path moved, filled in as it goes and read as it ends.

The handler may be cancelled (the client left): the proxy functions fill a
:class:`Traffic` kept on the request, and the caller reads it in a ``finally``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from relay.wire.channel import StreamChannel

__all__ = ["TRAFFIC", "Traffic"]


class Traffic:
    """Body bytes (WebSocket payloads) each way, and the status the client got."""

    __slots__ = ("received", "sent", "status")

    def __init__(self) -> None:
        self.sent = 0  # to the host
        self.received = 0  # from the host
        self.status = 0  # 0: no response head went out (yet)

    def took(self, channel: StreamChannel) -> None:
        """The stream is over: keep what crossed it."""
        self.sent = channel.sent_bytes
        self.received = channel.received_bytes


TRAFFIC: web.RequestKey[Traffic] = web.RequestKey("relay_traffic", Traffic)
