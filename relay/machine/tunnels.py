"""The relay's side of one tunnel, and the table of tunnels this machine holds."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

from relay.errors import ProtocolError, StreamRefused, TunnelBacklogged
from relay.wire.connection import TunnelConnection, WebSocketLike
from relay.wire.protocol import CloseCode, Drain

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from directory.models import HostRecord
    from relay.machine.metrics import DurationHistogram
    from relay.wire.channel import StreamChannel
    from relay.wire.protocol import Limits

__all__ = ["HeldHost", "LocalTunnels", "Tunnel"]


class HeldHost(msgspec.Struct, gc=False, frozen=True):
    """What a tunnel keeps of its host's record (its token hash stays in the store)."""

    id: str
    slug: str
    name: str
    test: bool


class Tunnel(TunnelConnection):
    """One agent's WebSocket on this relay: opens streams, pings, closes with a code."""

    __slots__ = (
        "_closer",
        "_moved",
        "agent_version",
        "connected_at",
        "draining",
        "epoch",
        "has_moved",
        "host",
        "max_streams",
        "next_sid",
        "remote_addr",
        "requests",
        "round_trips",
    )

    def __init__(
        self,
        ws: WebSocketLike,
        host: HostRecord,
        *,
        epoch: int,
        remote_addr: str,
        agent_version: str,
        local_limits: Limits,
        peer_limits: Limits,
        log: FilteringBoundLogger,
    ) -> None:
        super().__init__(ws, local_limits=local_limits, peer_limits=peer_limits, log=log)
        # Per-tunnel bytes count tens of thousands of times over: the record's token hash
        # and timestamp are not kept, and agents mostly share one version string.
        self.host = HeldHost(host.id, host.slug, host.name, host.test)
        self.epoch = epoch
        self.remote_addr = remote_addr
        self.agent_version = sys.intern(agent_version)
        self.connected_at = time.time()
        self.next_sid = 1
        self.draining = False
        # True once the host lives elsewhere (its agent moved during a drain) or we closed;
        # the event exists only while someone waits for it (see settled()).
        self.has_moved = False
        self._moved: asyncio.Event | None = None
        self._closer: asyncio.Task[None] | None = None
        self.max_streams = min(local_limits.max_streams, peer_limits.max_streams)
        self.requests = 0  # client requests served through it (--per-host-metrics)
        # relay_tunnel_rtt_seconds, once the endpoint has accepted the tunnel.
        self.round_trips: DurationHistogram | None = None

    def on_round_trip(self, seconds: float) -> None:
        """Count a ping's round trip to the agent and back."""
        if self.round_trips is not None:
            self.round_trips.observe(seconds)

    @property
    def log(self) -> FilteringBoundLogger:
        """The relay's logger bound to this tunnel.

        Built per use (logging is rare): a bound logger kept per tunnel would cost
        ~0.7 KiB each, tens of thousands of times over.
        """
        return self._log.bind(
            remote_addr=self.remote_addr,
            host_id=self.host.id,
            slug=self.host.slug,
            epoch=self.epoch,
        )

    def allocate_sid(self) -> int:
        """A new stream id toward the agent.

        Refused at the stream limit, when closing, and while the agent is not taking
        what waits for it (every head would wait too: clients that open requests and
        leave could grow the queue without bound until the agent is found silent).
        """
        if self.close_code is not None:
            raise StreamRefused("tunnel is closing")
        if len(self.streams) >= self.max_streams:
            raise StreamRefused(f"tunnel at its limit of {self.max_streams} concurrent streams")
        if self.backlogged:
            raise TunnelBacklogged(
                f"the host's agent is not keeping up ({self._out_bytes >> 20} MiB wait for it)"
            )
        sid = self.next_sid
        self.next_sid = sid + 1
        return sid

    def open_stream(self) -> StreamChannel:
        """Open a new task-served stream toward the agent (see :meth:`allocate_sid`)."""
        return self.open_channel(self.allocate_sid())

    def on_unknown_stream(self, frame: Any) -> None:  # noqa: ANN401 - one of STREAM_FRAMES
        """Frames for streams that already ended were in flight: ignore; others are errors."""
        if frame.sid < self.next_sid:
            return
        raise ProtocolError(f"agent sent {type(frame).__name__} on unopened stream {frame.sid}")

    def ping_due(self, interval: float, misses: int) -> bool:
        """Ping now, or close 4008 after ``misses`` intervals of silence.

        The ping wheel calls this once per ``interval``; False: no more pings needed.
        """
        if self.close_code is not None:
            return False
        silent = self.loop.time() - self.last_frame_at
        if silent >= interval * misses:
            self.log.warning("tunnel.missed_pongs", silent_s=round(silent, 3))
            self._closer = self.loop.create_task(self.close(CloseCode.MISSED_PONG, "missed pongs"))
            return False
        self.queue(self.ping())
        return True

    async def drain(self, deadline: float) -> None:
        """Tell the agent to move (in-band first: a close frame alone may be lost)."""
        self.draining = True
        await self.send(Drain(deadline))

    def mark_moved(self) -> None:
        """The host lives elsewhere now (or this tunnel closed): release settled()."""
        self.has_moved = True
        if self._moved is not None:
            self._moved.set()

    async def settled(self) -> None:
        """Wait until the agent has moved elsewhere (or the tunnel closed) and no stream is open."""
        if not self.has_moved:
            if self._moved is None:
                self._moved = asyncio.Event()
            await self._moved.wait()
        await self.wait_idle()

    async def close(self, code: int, reason: str) -> None:
        """Close the tunnel; anyone waiting for it to settle is released."""
        self.mark_moved()
        await super().close(code, reason)


class LocalTunnels:
    """Tunnels held by this machine, by host id and by slug."""

    def __init__(self) -> None:
        self.by_host: dict[str, Tunnel] = {}
        self.by_slug: dict[str, Tunnel] = {}
        # Tunnels whose agent moved away during a drain but that still carry streams.
        self.retired: dict[str, Tunnel] = {}
        self._recently_left: dict[str, float] = {}
        self._arrivals: dict[str, list[asyncio.Future[Tunnel | None]]] = {}
        self._claims: dict[str, list[asyncio.Future[Tunnel | None]]] = {}
        # Tunnels ever put in / taken out of the table (the GC policy reads them).
        self.added_total = 0
        self.removed_total = 0

    def __len__(self) -> int:
        return len(self.by_host)

    def add(self, tunnel: Tunnel) -> Tunnel | None:
        """Hold ``tunnel``; returns the tunnel to close as replaced, if any.

        Newest epoch wins: two connections of one host on this machine may reach the
        table in either order, and one that lost the claim race is refused here (it is
        returned itself) rather than displacing the newer one.
        """
        previous = self.by_host.get(tunnel.host.id)
        if previous is not None and previous.epoch > tunnel.epoch:
            return tunnel
        self.added_total += 1
        if previous is not None:
            self.removed_total += 1  # displaced: it will never be removed by itself
        self.by_host[tunnel.host.id] = tunnel
        self.by_slug[tunnel.host.slug] = tunnel
        for waiter in self._arrivals.pop(tunnel.host.slug, ()):
            if not waiter.done():
                waiter.set_result(tunnel)
        return previous

    def retire(self, tunnel: Tunnel) -> None:
        """Route new requests elsewhere, but keep ``tunnel`` for those that may not hop.

        Its host lives on another machine now; requests already replayed here (which
        must not hop again) can still use this tunnel until the drain closes it.
        """
        if self.remove(tunnel):
            self.retired[tunnel.host.slug] = tunnel

    def remove(self, tunnel: Tunnel) -> bool:
        """Forget ``tunnel`` unless a newer one took its place; True if removed."""
        if self.retired.get(tunnel.host.slug) is tunnel:
            del self.retired[tunnel.host.slug]
        if self.by_host.get(tunnel.host.id) is not tunnel:
            return False
        del self.by_host[tunnel.host.id]
        self.removed_total += 1
        self.by_slug.pop(tunnel.host.slug, None)
        self._recently_left[tunnel.host.slug] = time.monotonic()
        return True

    def by_slug_get(self, slug: str) -> Tunnel | None:
        """The live tunnel for ``slug`` on this machine."""
        return self.by_slug.get(slug)

    def left_within(self, slug: str, seconds: float) -> bool:
        """Whether the host's tunnel left this machine in the last ``seconds``."""
        left = self._recently_left.get(slug)
        if left is None:
            return False
        if time.monotonic() - left > seconds:
            del self._recently_left[slug]
            return False
        return True

    def claimed(self, host_id: str) -> None:
        """A machine (maybe another) just claimed ``host_id``: wake whoever waits for it."""
        for waiter in self._claims.pop(host_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, slug: str, host_id: str, timeout: float) -> Tunnel | None:
        """Wait up to ``timeout`` for the host to land here (returned) or be claimed elsewhere.

        Returns None on timeout or when another machine claimed the host; the caller
        looks the owner up again.
        """
        tunnel = self.by_slug.get(slug)
        if tunnel is not None or timeout <= 0:
            return tunnel
        waiter: asyncio.Future[Tunnel | None] = asyncio.get_running_loop().create_future()
        self._arrivals.setdefault(slug, []).append(waiter)
        self._claims.setdefault(host_id, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return None
        finally:
            for table, key in ((self._arrivals, slug), (self._claims, host_id)):
                waiters = table.get(key)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del table[key]

    def owned(self) -> list[tuple[str, int]]:
        """(host id, epoch) of every tunnel held, for ownership refresh."""
        return [(host_id, t.epoch) for host_id, t in self.by_host.items()]

    def all(self) -> list[Tunnel]:
        """Every tunnel held."""
        return list(self.by_host.values())
