"""What the agent notes about each request it serves, for its output and its inspector.

An exchange with a :class:`RequestTap` keeps a :class:`Seen` record: method, target,
status, timing, sizes and, when the inspector is on, the headers and bodies (each body
up to :data:`BODY_CAP`, flagged when cut). When the request ends the tap hands the record
to its :class:`RequestLines` (a terminal line or a JSON line). With ``--quiet`` and no
``--inspect`` an agent has no tap and its exchanges keep no record at all.

The inspector's records live in a :class:`Ring` of at most ``capacity`` entries; a record
pushed out (finished or not) lets go of its bodies at once, so captured bodies never
exceed ``capacity`` x 2 x ``BODY_CAP``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    from relay.wire.protocol import Headers, ReqHead, WsOpen

__all__ = ["BODY_CAP", "RequestLines", "RequestTap", "Ring", "Seen"]

#: Bytes of each body (request, response) the inspector keeps.
BODY_CAP: Final = 64 * 1024

_perf = time.perf_counter
_now = time.time


class Seen:
    """One request through a tunnel as the agent served it."""

    __slots__ = (
        "at",
        "duration_ms",
        "error",
        "finished",
        "id",
        "method",
        "req_body",
        "req_headers",
        "req_truncated",
        "resp_body",
        "resp_bytes",
        "resp_headers",
        "resp_truncated",
        "started",
        "status",
        "tap",
        "target",
        "websocket",
    )

    def __init__(
        self, tap: RequestTap, method: str, target: str, headers: Headers, *, capture: bool
    ) -> None:
        self.tap = tap
        self.id = 0
        self.method = method
        self.target = target
        self.req_headers = headers
        self.websocket = False
        self.at = _now()
        self.started = _perf()
        self.status = 0
        self.resp_headers: Headers = []
        self.resp_bytes = 0
        self.duration_ms = 0.0
        self.error = ""
        self.finished = False
        self.req_body: bytearray | None = bytearray() if capture else None
        self.resp_body: bytearray | None = bytearray() if capture else None
        self.req_truncated = False
        self.resp_truncated = False

    def request_body(self, chunk: bytes) -> None:
        """Request body bytes as they pass (kept only when capturing)."""
        body = self.req_body
        if body is not None and _keep(body, chunk):
            self.req_truncated = True

    def response(self, status: int, headers: Headers) -> None:
        """The response head sent to the relay."""
        self.status = status
        self.resp_headers = headers

    def response_body(self, data: bytes) -> None:
        """Response body bytes as they pass: counted, and kept when capturing."""
        self.resp_bytes += len(data)
        body = self.resp_body
        if body is not None and _keep(body, data):
            self.resp_truncated = True

    def finish(self, error: str = "") -> None:
        """The exchange ended (``error``: how, when not with a complete response)."""
        self.duration_ms = (_perf() - self.started) * 1000.0
        self.error = error
        self.finished = True
        self.tap.finished(self)

    def forget_bodies(self) -> None:
        """Pushed out of the ring: keep nothing more (an unfinished exchange goes on)."""
        self.req_body = self.resp_body = None


class RequestLines(Protocol):
    """Where a finished request is reported (a terminal line, a JSON line)."""

    def request(self, tap: RequestTap, seen: Seen) -> None:
        """Report one finished request."""


class Ring:
    """The inspector's last ``capacity`` requests, oldest first, by increasing id."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Seen] = deque()
        self._next_id = 1

    def add(self, seen: Seen) -> None:
        """Keep ``seen``; the oldest record goes (and drops its bodies) when full."""
        seen.id = self._next_id
        self._next_id += 1
        items = self._items
        if len(items) >= self.capacity:
            items.popleft().forget_bodies()
        items.append(seen)

    def get(self, id_: int) -> Seen | None:
        """The record with this id, if still kept."""
        items = self._items
        if not items:
            return None
        index = id_ - items[0].id  # ids are consecutive within the ring
        return items[index] if 0 <= index < len(items) else None

    def __iter__(self) -> Iterator[Seen]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def held_bytes(self) -> int:
        """Body bytes the ring holds (bounded by capacity x 2 x BODY_CAP)."""
        return sum(len(s.req_body or b"") + len(s.resp_body or b"") for s in self._items)


class RequestTap:
    """One tunnel's view of its requests: makes the records, passes finished ones on."""

    __slots__ = ("host_id", "label", "lines", "ring", "slug", "upstream")

    def __init__(
        self, label: str, upstream: str, *, lines: RequestLines | None, ring: Ring | None
    ) -> None:
        self.label = label  # the tunnel's name, else its slug once connected
        self.upstream = upstream  # the local service (replays go there)
        self.lines = lines
        self.ring = ring
        self.slug = ""
        self.host_id = ""

    def begin(self, head: ReqHead) -> Seen:
        """A record for a request that just arrived."""
        ring = self.ring
        seen = Seen(self, head.method, head.target, head.headers, capture=ring is not None)
        if ring is not None:
            ring.add(seen)
            if head.chunk:
                seen.request_body(head.chunk)
        return seen

    def begin_websocket(self, head: WsOpen) -> Seen:
        """A record for a WebSocket the relay opens (101 once the service accepts it)."""
        seen = Seen(self, "GET", head.target, head.headers, capture=self.ring is not None)
        seen.websocket = True
        if self.ring is not None:
            self.ring.add(seen)
        return seen

    def finished(self, seen: Seen) -> None:
        """Report a finished request."""
        if self.lines is not None:
            self.lines.request(self, seen)


def _keep(body: bytearray, data: bytes) -> bool:
    """Append what fits under :data:`BODY_CAP`; whether any of ``data`` was cut."""
    room = BODY_CAP - len(body)
    if len(data) > room:
        body += data[: max(room, 0)]
        return True
    body += data
    return False
