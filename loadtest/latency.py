"""A TCP forwarder that delays every byte by a fixed time each way: a long round trip on
loopback, for the tunnel between an agent and its relay (``loadtest.long_rtt``).

Bytes keep their order and arrive ``--delay`` seconds after they were read; nothing
else is modelled (no bandwidth cap, no loss). A side whose peer stops taking bytes is
no longer read, so the forwarder holds at most what the delay keeps in flight.

python -m loadtest.latency --listen PORT --to PORT --delay SECONDS
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency of the relay
    uvloop = None


class Side(asyncio.Protocol):
    """One connection of a forwarded pair; what it reads reaches the other side late."""

    def __init__(self, delay: float, to: int = 0) -> None:
        self.delay = delay
        self.to = to  # the accepted side: the port to connect its peer to
        self.peer: Side | None = None
        self.transport: asyncio.Transport | None = None
        self.late: deque[tuple[float, bytes]] = deque()  # (when due, bytes) read from peer
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.early: list[bytes] = []
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        if self.to:
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _t, peer = await self.loop.create_connection(
                lambda: Side(self.delay), "127.0.0.1", self.to
            )
        except OSError:
            self.transport.close()
            return
        self.peer, peer.peer = peer, self
        for data in self.early:
            peer.deliver_later(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)  # before its peer connected
        else:
            self.peer.deliver_later(data)

    def deliver_later(self, data: bytes) -> None:
        """Write ``data`` to this side's socket once the delay has passed."""
        due = self.loop.time() + self.delay
        self.late.append((due, data))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._due)

    def _due(self) -> None:
        self.timer = None
        now = self.loop.time()
        late = self.late
        while late and late[0][0] <= now:
            data = late.popleft()[1]
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
        if late:
            self.timer = self.loop.call_at(late[0][0], self._due)
        elif self.closing and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            # What is still on its way arrives first, as it would over a real path.
            peer.closing = True
            if not peer.late:
                peer.transport.close()


async def serve(listen: int, to: int, delay: float) -> None:
    """Forward 127.0.0.1:``listen`` to 127.0.0.1:``to`` with ``delay`` seconds each way."""
    server = await asyncio.get_running_loop().create_server(
        lambda: Side(delay, to), "127.0.0.1", listen
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True, help="seconds, each way")
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(args.listen, args.to, args.delay))


if __name__ == "__main__":
    main()
