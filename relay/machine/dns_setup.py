"""The DNS service of a relay machine, built from its checked options.

Secrets never travel in the config struct or on the command line: the API token, zone ids
and API key are read from the environment here, where the providers are built, and are
never logged (only whether they are set).

========================  ==================================================
``CLOUDFLARE_API_TOKEN``  API token with Zone.DNS edit on the zone(s)
``CLOUDFLARE_ZONE_ID``    id of the zone holding ``--dns-zone``
``CLOUDFLARE_TEST_ZONE_ID``  id of ``--dns-test-zone`` (only when one is set)
``PDNS_API_KEY``          the PowerDNS server's ``api-key``
========================  ==================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from directory.dns.ratelimit import RedisRateLimiter
from directory.dns.service import DnsService
from directory.dns.state import DnsKeys
from directory.dns.telemetry import DnsMetrics
from directory.keys import Keys
from relay.dns_options import build_providers, dns_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.metrics import Meter
    from structlog.typing import FilteringBoundLogger

    from directory.events import AnyEvent
    from directory.ownership import OwnershipStore
    from directory.presence import PresenceStore
    from directory.store import StoreClient
    from relay.config import ServeConfig

__all__ = ["build_dns_service"]


def build_dns_service(
    cfg: ServeConfig,
    *,
    redis: StoreClient,
    ownership: OwnershipStore,
    presence: PresenceStore,
    meter: Meter,
    log: FilteringBoundLogger,
    emit: Callable[[AnyEvent], None],
) -> DnsService:
    """The DNS service of this relay machine (not started yet)."""
    settings = dns_settings(cfg)
    keys = Keys(cfg.key_prefix)
    dns_keys = DnsKeys(keys)
    limiter = RedisRateLimiter(
        redis,
        dns_keys.rate(),
        dns_keys.rate_pause(),
        limit=cfg.dns_rate_limit,
        window=cfg.dns_rate_window,
    )
    return DnsService(
        settings=settings,
        redis=redis,
        keys=keys,
        ownership=ownership,
        presence=presence,
        providers=build_providers(cfg, settings),
        limiter=limiter,
        metrics=DnsMetrics(meter),
        log=log.bind(subsystem="dns"),
        holder=cfg.machine_id,
        emit=emit,
        consume_events=True,
    )
