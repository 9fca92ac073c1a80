"""Settings of the DNS work (built by the relay from its configuration), and zone choice.

Names: a host's records live at ``<slug>.<base-domain>`` in the zone ``zone`` (the base
domain, or a parent of it). A *test* host lives at ``<slug>.<test-zone>`` instead when a
test zone is configured, so tests never write to the production zone.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from directory.dns.records import Target, normalize_name
from directory.errors import InvalidInput

__all__ = ["DnsSettings"]


class DnsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the DNS worker and sync need to know; all durations in seconds."""

    mode: Literal["wildcard", "managed"] = "wildcard"
    base_domain: str = "localhost"
    zone: str = "localhost"
    test_zone: str | None = None
    targets: tuple[Target, ...] = ()
    ttl: int = 300
    proxied: bool | None = None
    marker: str = "relay-directory:relay"
    # Records outlive a disconnect by this long (DESIGN: 24 h).
    offline_grace: float = 86400.0
    # A sync spares orphans changed this recently: another machine may have just
    # created them for a host this sync's reading of the registry did not include yet.
    orphan_grace: float = 300.0
    max_deletes: int = 100
    sync_interval: float = 900.0
    sweep_interval: float = 30.0
    attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # A host whose converge failed waits this long before the next try, doubling per
    # failure up to the cap (the full sync still covers it).
    error_backoff: float = 30.0
    error_backoff_cap: float = 900.0
    # Hosts converged together (their writes share provider calls).
    batch_hosts: int = 200
    lock_ttl: float = 120.0

    def __post_init__(self) -> None:
        zone = normalize_name(self.zone)
        base = normalize_name(self.base_domain)
        if base != zone and not base.endswith("." + zone):
            raise InvalidInput(f"the base domain {base} is not inside the DNS zone {zone}")
        if self.mode == "managed" and not self.targets:
            raise InvalidInput("managed DNS needs a target (--dns-target)")
        if self.ttl < 1 or self.max_deletes < 0 or self.attempts < 1:
            raise InvalidInput("DNS ttl and attempts must be >= 1, max deletes >= 0")

    @property
    def managed(self) -> bool:
        """Whether per-host records are written."""
        return self.mode == "managed"

    def zones(self) -> list[str]:
        """The zones records are written in."""
        zones = [normalize_name(self.zone)]
        if self.test_zone:
            zones.append(normalize_name(self.test_zone))
        return zones

    def placement(self, slug: str, *, test: bool) -> tuple[str, str]:
        """``(zone, fqdn)`` of a host's records."""
        if test and self.test_zone:
            zone = normalize_name(self.test_zone)
            return zone, f"{slug}.{zone}"
        return normalize_name(self.zone), f"{slug}.{normalize_name(self.base_domain)}"

    def wildcard_record(self) -> str:
        """The one record wildcard mode needs, as an operator would type it."""
        if not self.targets:
            return f"*.{self.base_domain}  ->  (this relay's public address: CNAME or A/AAAA)"
        return "; ".join(f"*.{self.base_domain} {t.type} {t.content}" for t in self.targets)
