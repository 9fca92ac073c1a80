"""How `relay serve` is stopped: the first SIGTERM or SIGINT drains, a SIGINT during it stops.

A platform stops a machine with SIGTERM and waits (Fly: ``kill_timeout``); the drain moves
every agent to another machine first, so no request fails. A person stops a relay with
Ctrl-C and may not want to wait: the relay says that it is draining and for at most how
long, and a second Ctrl-C stops it at once (exit status 130, as for a shell's Ctrl-C).
A second SIGTERM changes nothing: the drain already under way is what SIGTERM asks for.
"""

from __future__ import annotations

import asyncio
import signal

__all__ = ["EXIT_STOPPED_AT_ONCE", "StopSignals", "drain_notice"]

EXIT_STOPPED_AT_ONCE = 128 + signal.SIGINT  # 130


class StopSignals:
    """SIGTERM/SIGINT handlers of the running loop; ``drain`` and ``now`` say what was asked."""

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.now = asyncio.Event()
        self.first: str | None = None  # the signal that started the drain, by name

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGTERM and SIGINT on ``loop`` (instead of KeyboardInterrupt)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.received, sig)

    def received(self, sig: signal.Signals) -> None:
        """One signal arrived: the first drains; a SIGINT after it stops at once."""
        if not self.drain.is_set():
            self.first = sig.name
            self.drain.set()
        elif sig == signal.SIGINT:
            self.now.set()


def drain_notice(tunnels: int, peers: int | None, drain_timeout: float) -> str:
    """The line a person at the terminal reads when the relay starts to stop."""
    window = f"in-flight requests get up to {drain_timeout:g} s (--drain-timeout)"
    if tunnels == 0:
        what = "relay: stopping (no tunnels held)"
    elif peers == 0:
        what = f"relay: stopping: no other machine to move {_n(tunnels)} to; {window}"
    else:
        what = f"relay: draining: moving {_n(tunnels)} to other machines; {window}"
    return f"{what}. Press Ctrl-C again to stop at once.\n"


def _n(tunnels: int) -> str:
    return f"{tunnels} tunnel{'' if tunnels == 1 else 's'}"
