"""What `relay agent` prints: a status block and request lines on a terminal, JSON lines elsewhere.

On a terminal (:class:`Console`) each tunnel's state shows as a short block when it comes
online (name, slug, public URL, local target, relay machine) and as one line when it
changes otherwise (reconnecting, moving, refused), and each finished request as one line.
Elsewhere structlog's JSON lines report the states, and :class:`JsonRequestLines` adds an
``agent.request`` line per request in the same shape.

A request line is on the agent's hot path: it is formatted by hand and written in one
call, with the time stamp's text made once per second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TextIO

import msgspec

from relay import __version__

if TYPE_CHECKING:
    from relay.agent.observe import RequestTap, Seen

__all__ = ["Console", "JsonRequestLines", "StateSink", "TunnelView"]

_PATH_WIDTH: Final = 48
_JSON_PATH_MAX: Final = 2048
_RESET: Final = "\x1b[0m"
_STATUS_COLOR: Final = {1: "\x1b[36m", 2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}
_STATE_COLOR: Final = {"online": "\x1b[32m", "refused": "\x1b[31m", "stopped": "\x1b[2m"}


@dataclass(slots=True)
class TunnelView:
    """What the output shows of one tunnel; the agent updates it and reports changes."""

    label: str  # the tunnel's name from the config, if any
    target: str  # the local service
    slug: str = ""
    name: str = ""  # the host's name at the relay
    url: str = ""  # the public URL, as the relay announced it
    machine: str = ""
    state: str = "connecting"
    detail: str = ""

    @property
    def title(self) -> str:
        """How this tunnel is named in the output."""
        name = self.label or self.name
        if name and self.slug and name != self.slug:
            return f"{name} ({self.slug})"
        return name or self.slug or self.target


class StateSink(Protocol):
    """Where an agent reports its tunnels' state changes."""

    def tunnel_state(self, view: TunnelView) -> None:
        """``view`` changed (its ``state`` and ``detail`` say how)."""


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


class Console:
    """The terminal output of one agent process (module docstring)."""

    def __init__(
        self, stream: TextIO, *, requests: bool, color: bool, tunnels: int, inspector: str = ""
    ) -> None:
        self.stream = stream
        self.requests = requests
        self.color = color
        self.multi = tunnels > 1
        self._label_width = 0
        self._sec = -1
        self._clock = ""
        head = f"relay agent {__version__}"
        if inspector:
            head += f"  ·  inspector {inspector}"
        self._write(f"{self._dim(head + '  ·  Ctrl-C to quit')}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _dim(self, text: str) -> str:
        return f"\x1b[2m{text}{_RESET}" if self.color else text

    def _now(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._clock = time.strftime("%H:%M:%S", time.localtime(sec))
        return self._clock

    def tunnel_state(self, view: TunnelView) -> None:
        """A tunnel changed state: a block when it comes online, else one line."""
        self._label_width = max(self._label_width, len(view.title))
        state = view.state
        if self.color and state in _STATE_COLOR:
            state = f"{_STATE_COLOR[state]}{state}{_RESET}"
        detail = f" {view.detail}" if view.detail else ""
        if view.state != "online":
            self._write(f"{self._now()}  {view.title}  {state}{detail}\n")
            return
        url = view.url or f"(slug {view.slug}; this relay does not announce URLs)"
        lines = [
            f"{self._now()}  {view.title}  {state}{detail}",
            f"    public   {url}",
            f"    local    {view.target}",
            f"    relay    {view.machine}",
        ]
        self._write("\n".join(lines) + "\n")

    def request(self, tap: RequestTap, seen: Seen) -> None:
        """One finished request, one line: time, method, path, status, ms, bytes."""
        if not self.requests:
            return
        path = seen.target
        if len(path) > _PATH_WIDTH:
            path = path[: _PATH_WIDTH - 1] + "…"
        if seen.status and not seen.error:
            status = str(seen.status)
            if self.color:
                color = _STATUS_COLOR.get(seen.status // 100, "")
                status = f"{color}{status}{_RESET}"
        else:
            status = f"--- {seen.error or 'no answer'}"
        label = f"{tap.label or tap.slug:<{self._label_width}}  " if self.multi else ""
        self.stream.write(
            f"{self._now()}  {label}{seen.method:<7} {path:<{_PATH_WIDTH}} {status}"
            f"  {seen.duration_ms:8.1f} ms  {_size(seen.resp_bytes):>9}\n"
        )


class JsonRequestLines:
    """``agent.request`` as one JSON line, shaped like the structlog lines around it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._encode = msgspec.json.Encoder().encode
        self._sec = -1
        self._stamp = ""

    def request(self, tap: RequestTap, seen: Seen) -> None:
        """Write one request's line."""
        at = seen.at
        sec = int(at)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        line: dict[str, object] = {
            "subsystem": "agent",
            "host_id": tap.host_id,
            "slug": tap.slug,
            "event": "agent.request",
            "method": seen.method,
            "path": seen.target[:_JSON_PATH_MAX],
            "status": seen.status,
            "duration_ms": round(seen.duration_ms, 3),
            "bytes": seen.resp_bytes,
            "level": "info",
            "timestamp": f"{self._stamp}.{int((at - sec) * 1e6):06d}Z",
        }
        if tap.label:
            line["tunnel"] = tap.label
        if seen.error:
            line["error"] = seen.error
        self.stream.write(self._encode(line).decode() + "\n")
