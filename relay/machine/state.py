"""Everything a request handler of the relay needs, gathered in one object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from relay.machine.route_cache import RouteCache

if TYPE_CHECKING:
    import aiohttp
    from structlog.typing import FilteringBoundLogger

    from directory.dns.service import DnsService
    from directory.hosts import HostRegistry
    from directory.machines import MachineRegistry
    from directory.ownership import OwnershipStore
    from directory.presence import PresenceStore
    from directory.store import StoreClient
    from relay.config import ServeConfig
    from relay.machine.access_log import AccessLog
    from relay.machine.events import EventEmitter
    from relay.machine.metrics import Metrics
    from relay.machine.ping_wheel import PingWheel
    from relay.machine.tunnels import LocalTunnels
    from relay.wire.protocol import Limits

__all__ = ["HANDSHAKE_CONCURRENCY", "STATE", "RelayState", "Upkeep"]

HANDSHAKE_CONCURRENCY = 32  # of the store pool's 64 connections


@dataclass(eq=False)
class Upkeep:
    """The store as the machine's own upkeep (heartbeat, ownership refresh) reaches it.

    Its own small pool: a storm of agent handshakes queued on the main pool must never
    delay a refresh past the owner TTL (the machine would lose every tunnel it holds).
    """

    redis: StoreClient
    ownership: OwnershipStore
    machines: MachineRegistry


@dataclass(eq=False)
class RelayState:
    """The relay machine's shared state (one per process)."""

    config: ServeConfig
    redis: StoreClient
    hosts: HostRegistry
    ownership: OwnershipStore
    tunnels: LocalTunnels
    metrics: Metrics
    log: FilteringBoundLogger
    admin_token: str
    machines: MachineRegistry
    peer_client: aiohttp.ClientSession  # machine-to-machine forwarding
    cluster_secret: str
    events: EventEmitter  # tunnel events to the log (relay/events.py)
    upkeep: Upkeep
    pings: PingWheel  # pings every held tunnel (relay/ping_wheel.py)
    presence: PresenceStore  # the presence projection, read by the API
    draining: bool = False
    store_ok: bool = True
    # Tunnel handlers still running: a drain waits for them so each releases ownership.
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    dns: DnsService | None = None  # DNS records of hosts (relay/dns_setup.py)
    access_log: AccessLog | None = None  # --access-log (None: off, and nothing is built)
    # What this relay accepts from agents (config.limits), built once, shared by tunnels.
    limits: Limits = field(init=False)
    # Directory answers for requests whose host is held elsewhere (relay/machine/route_cache.py).
    routes: RouteCache = field(init=False)
    # Agent handshakes using the store at once: the rest wait here, in order, leaving
    # the pool to requests (a reconnect storm brings thousands at once).
    handshake_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
    )

    def __post_init__(self) -> None:
        self.limits = self.config.limits
        self.routes = RouteCache(self.hosts, self.machines)

    def url_for(self, slug: str, *, test: bool = False) -> str:
        """The public URL of a host (test hosts live under the DNS test zone, if any)."""
        base = self.config.base_domain
        if test and self.config.dns_test_zone:
            base = self.config.dns_test_zone.strip(".").lower()
        if base == "localhost" or base.endswith(".localhost"):
            # Local runs: the relay itself answers on its listen port.
            port = self.config.host_port[1]
            return f"http://{slug}.{base}:{port}/"
        # Deployed: TLS is terminated in front of the relay on the default port.
        return f"https://{slug}.{base}/"


STATE: web.AppKey[RelayState] = web.AppKey("relay_state", RelayState)
