"""What the converging worker and the sync share: one bundle of collaborators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from structlog.typing import FilteringBoundLogger

    from directory.dns.provider import DnsProvider
    from directory.dns.settings import DnsSettings
    from directory.dns.state import DnsStateStore
    from directory.dns.telemetry import DnsMetrics
    from directory.dns.writer import DnsWriter
    from directory.keys import Keys
    from directory.ownership import OwnershipStore
    from directory.presence import PresenceStore
    from directory.store import StoreClient

__all__ = ["DnsContext"]


@dataclass(frozen=True, slots=True, eq=False)
class DnsContext:
    """Settings, store, projections, providers (by zone), writer, metrics and log."""

    settings: DnsSettings
    redis: StoreClient
    keys: Keys
    ownership: OwnershipStore
    presence: PresenceStore | None
    providers: Mapping[str, DnsProvider]
    states: DnsStateStore
    writer: DnsWriter
    metrics: DnsMetrics
    log: FilteringBoundLogger
