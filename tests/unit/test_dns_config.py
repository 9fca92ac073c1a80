"""DNS options of `relay serve`: defaults, validation with clear messages, secrets from env."""

from __future__ import annotations

import pytest

from directory.dns.cloudflare import CloudflareProvider
from directory.dns.powerdns import PowerDnsProvider
from relay.cli.main import _build, _parser
from relay.config import ServeConfig
from relay.dns_options import build_providers, check_dns_config, dns_settings
from relay.errors import ConfigError


def test_wildcard_is_the_default_and_needs_nothing():
    cfg = ServeConfig().resolved()
    assert cfg.dns_mode == "wildcard" and cfg.dns_ttl == 300
    assert cfg.cloudflare_api_base == "https://api.cloudflare.com/client/v4"
    assert cfg.pdns_server_id == "localhost"
    settings = dns_settings(cfg)
    assert not settings.managed and settings.zone == "localhost"
    assert build_providers(cfg, settings, env={}) == {}


def test_flags_exist_for_every_dns_option():
    args = _parser().parse_args([
        "serve", "--dns-mode", "managed", "--dns-provider", "powerdns", "--dns-target", "relay.example.net",
        "--pdns-api-url", "http://127.0.0.1:8081", "--dns-ttl", "60", "--cloudflare-proxied",
        "--base-domain", "example.com", "--dns-zone", "example.com", "--dns-test-zone", "test.example.com",
    ])  # fmt: skip
    cfg = _build(ServeConfig, args)
    assert (cfg.dns_mode, cfg.dns_provider, cfg.dns_ttl, cfg.cloudflare_proxied) == (
        "managed",
        "powerdns",
        60,
        True,
    )
    assert cfg.dns_test_zone == "test.example.com"


@pytest.mark.parametrize(
    ("fields", "env", "message"),
    [
        ({"dns_mode": "managed"}, {}, "target"),
        ({"dns_mode": "managed", "dns_target": "relay.example.net"}, {}, "--dns-provider"),
        (
            {
                "dns_mode": "managed",
                "dns_target": "relay.example.net",
                "dns_provider": "cloudflare",
            },
            {},
            "CLOUDFLARE_API_TOKEN, CLOUDFLARE_ZONE_ID",
        ),
        (
            {"dns_mode": "managed", "dns_target": "relay.example.net", "dns_provider": "powerdns"},
            {"PDNS_API_KEY": "k"},
            "--pdns-api-url",
        ),
        (
            {
                "dns_mode": "managed",
                "dns_target": "relay.example.net",
                "dns_provider": "powerdns",
                "pdns_api_url": "http://p:8081",
            },
            {},
            "PDNS_API_KEY",
        ),
        (
            {
                "dns_mode": "managed",
                "dns_target": "relay.example.net",
                "dns_provider": "cloudflare",
                "dns_test_zone": "t.example.com",
            },
            {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ZONE_ID": "z"},
            "CLOUDFLARE_TEST_ZONE_ID",
        ),
        (
            {
                "dns_mode": "managed",
                "dns_target": "relay.example.net, 192.0.2.1",
                "dns_provider": "memory",
            },
            {},
            "only target",
        ),
        ({"dns_zone": "other.org"}, {}, "not inside the DNS zone"),
        (
            {
                "dns_mode": "managed",
                "dns_target": "relay.example.net",
                "dns_provider": "cloudflare",
                "cloudflare_api_base": "ftp://x",
            },
            {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ZONE_ID": "z"},
            "--cloudflare-api-base",
        ),
    ],
)
def test_unusable_dns_settings_are_refused_with_a_clear_message(fields, env, message):
    cfg = ServeConfig(base_domain="relay.example.com", **fields)
    with pytest.raises(ConfigError, match=message):
        check_dns_config(cfg, env)


def test_resolved_checks_dns_settings_too(monkeypatch):
    monkeypatch.delenv("PDNS_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="PDNS_API_KEY"):
        ServeConfig(
            dns_mode="managed",
            dns_target="192.0.2.1",
            dns_provider="powerdns",
            pdns_api_url="http://127.0.0.1:1",
        ).resolved()


async def test_providers_read_their_secrets_from_the_environment():
    env = {
        "CLOUDFLARE_API_TOKEN": "secret-token",
        "CLOUDFLARE_ZONE_ID": "abc123",
        "CLOUDFLARE_TEST_ZONE_ID": "def456",
        "PDNS_API_KEY": "k",
    }
    cfg = ServeConfig(
        base_domain="relay.example.com",
        dns_zone="example.com",
        dns_test_zone="test.example.net",
        dns_mode="managed",
        dns_target="relay.example.net",
        dns_provider="cloudflare",
    )
    check_dns_config(cfg, env)
    providers = build_providers(cfg, dns_settings(cfg), env=env)
    assert set(providers) == {"example.com", "test.example.net"}
    assert all(isinstance(p, CloudflareProvider) for p in providers.values())
    assert providers["test.example.net"]._path == "/zones/def456/dns_records"
    assert "secret-token" not in repr(cfg)
    for p in providers.values():
        await p.aclose()
    cfg = ServeConfig(
        base_domain="example.com",
        dns_mode="managed",
        dns_target="192.0.2.1",
        dns_provider="powerdns",
        pdns_api_url="http://127.0.0.1:8081",
    )
    (pdns,) = build_providers(cfg, dns_settings(cfg), env=env).values()
    assert isinstance(pdns, PowerDnsProvider)
    await pdns.aclose()
