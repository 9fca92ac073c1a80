"""DNS options of `relay serve` checked and turned into settings (pure, no I/O).

Reads only the options it names (:class:`DnsOptions`, which ``ServeConfig`` satisfies),
so ``relay.config`` can check them in ``resolved()`` without importing the machine's
DNS service.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

from directory.dns.cloudflare import CloudflareProvider
from directory.dns.memory import MemoryProvider
from directory.dns.powerdns import PowerDnsProvider
from directory.dns.records import marker_for, normalize_name, parse_target
from directory.dns.settings import DnsSettings
from directory.errors import InvalidInput
from relay.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx

    from directory.dns.provider import DnsProvider

__all__ = ["DnsOptions", "build_providers", "check_dns_config", "dns_settings"]


class DnsOptions(Protocol):
    """The options DNS reads (the fields of ``ServeConfig`` of these names)."""

    @property
    def dns_mode(self) -> Literal["wildcard", "managed"]: ...  # noqa: D102
    @property
    def dns_provider(self) -> str | None: ...  # noqa: D102
    @property
    def dns_zone(self) -> str | None: ...  # noqa: D102
    @property
    def dns_test_zone(self) -> str | None: ...  # noqa: D102
    @property
    def dns_target(self) -> str | None: ...  # noqa: D102
    @property
    def dns_ttl(self) -> int: ...  # noqa: D102
    @property
    def dns_offline_grace(self) -> float: ...  # noqa: D102
    @property
    def dns_orphan_grace(self) -> float: ...  # noqa: D102
    @property
    def dns_max_deletes(self) -> int: ...  # noqa: D102
    @property
    def dns_sync_interval(self) -> float: ...  # noqa: D102
    @property
    def reconcile_interval(self) -> float: ...  # noqa: D102
    @property
    def base_domain(self) -> str: ...  # noqa: D102
    @property
    def key_prefix(self) -> str: ...  # noqa: D102
    @property
    def cloudflare_proxied(self) -> bool: ...  # noqa: D102
    @property
    def cloudflare_api_base(self) -> str: ...  # noqa: D102
    @property
    def pdns_api_url(self) -> str | None: ...  # noqa: D102
    @property
    def pdns_server_id(self) -> str: ...  # noqa: D102


_REQUIRED_ENV = {
    "cloudflare": ("CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ZONE_ID"),
    "powerdns": ("PDNS_API_KEY",),
}


def dns_settings(cfg: DnsOptions) -> DnsSettings:
    """The DNS settings of a resolved config; :class:`ConfigError` says what is wrong."""
    try:
        targets = parse_target(cfg.dns_target) if cfg.dns_target else ()
        return DnsSettings(
            mode=cfg.dns_mode,
            base_domain=cfg.base_domain,
            zone=normalize_name(cfg.dns_zone or cfg.base_domain),
            test_zone=normalize_name(cfg.dns_test_zone) if cfg.dns_test_zone else None,
            targets=targets,
            ttl=cfg.dns_ttl,
            proxied=cfg.cloudflare_proxied if cfg.dns_provider == "cloudflare" else None,
            marker=marker_for(cfg.key_prefix),
            offline_grace=cfg.dns_offline_grace,
            orphan_grace=cfg.dns_orphan_grace,
            max_deletes=cfg.dns_max_deletes,
            sync_interval=cfg.dns_sync_interval,
            sweep_interval=cfg.reconcile_interval,
            error_backoff=cfg.reconcile_interval,
            error_backoff_cap=cfg.dns_sync_interval,
        )
    except InvalidInput as exc:
        raise ConfigError(f"DNS settings: {exc}") from exc


def check_dns_config(cfg: DnsOptions, env: Mapping[str, str] | None = None) -> None:
    """Refuse a DNS configuration that cannot work, with a message saying how to fix it."""
    env = os.environ if env is None else env
    settings = dns_settings(cfg)
    if not settings.managed:
        return
    if cfg.dns_provider is None:
        raise ConfigError(
            "--dns-mode managed needs --dns-provider cloudflare|powerdns (or memory for a "
            "local trial: records then live only in this process)"
        )
    missing = [name for name in _REQUIRED_ENV.get(cfg.dns_provider, ()) if not env.get(name)]
    if cfg.dns_provider == "cloudflare":
        _check_http_url(cfg.cloudflare_api_base, "--cloudflare-api-base")
        if settings.test_zone and not env.get("CLOUDFLARE_TEST_ZONE_ID"):
            missing.append("CLOUDFLARE_TEST_ZONE_ID")
    if cfg.dns_provider == "powerdns":
        if not cfg.pdns_api_url:
            raise ConfigError("--dns-provider powerdns needs --pdns-api-url (the server's API)")
        _check_http_url(cfg.pdns_api_url, "--pdns-api-url")
    if missing:
        raise ConfigError(
            f"--dns-provider {cfg.dns_provider} needs the environment variable(s) "
            f"{', '.join(missing)}"
        )


def _check_http_url(value: str, flag: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{flag} must be an http(s) URL, got {value!r}")


def build_providers(
    cfg: DnsOptions,
    settings: DnsSettings,
    *,
    env: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, DnsProvider]:
    """One provider per managed zone (none in wildcard mode)."""
    env = os.environ if env is None else env
    if not settings.managed or cfg.dns_provider is None:
        return {}
    providers: dict[str, DnsProvider] = {}
    for zone in settings.zones():
        test = zone == settings.test_zone and zone != normalize_name(settings.zone)
        if cfg.dns_provider == "memory":
            providers[zone] = MemoryProvider(zone)
        elif cfg.dns_provider == "cloudflare":
            zone_id = env["CLOUDFLARE_TEST_ZONE_ID" if test else "CLOUDFLARE_ZONE_ID"]
            providers[zone] = CloudflareProvider(
                zone,
                zone_id=zone_id,
                api_token=env["CLOUDFLARE_API_TOKEN"],
                api_base=cfg.cloudflare_api_base,
                transport=transport,
            )
        else:
            providers[zone] = PowerDnsProvider(
                zone,
                api_url=cfg.pdns_api_url or "",
                api_key=env["PDNS_API_KEY"],
                server_id=cfg.pdns_server_id,
                marker=settings.marker,
                transport=transport,
            )
    return providers
