"""Fixtures of the DNS tests: a real Valkey and a real PowerDNS server per session.

``dns_env`` builds the DNS service in-process around any provider (memory, PowerDNS, the
Cloudflare stand-in), on a clean store, with short intervals; end-to-end tests start real
`relay serve` processes through ``tests.e2e.harness``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import pytest
import structlog

from directory.dns.ratelimit import MemoryRateLimiter
from directory.dns.records import marker_for, parse_target
from directory.dns.service import DnsService
from directory.dns.settings import DnsSettings
from directory.dns.telemetry import DnsMetrics
from directory.events import MemoryEventLog
from directory.hosts import HostRegistry
from directory.keys import Keys
from directory.ownership import OwnershipStore
from directory.presence import PresenceStore
from directory.store import connect
from tests.dns.pdns import start_pdns
from tests.e2e.harness import Cluster
from tests.servers import start_valkey, start_valkey_cluster

ZONE = "dns.test"
TEST_ZONE = "tests.dns.test"


@pytest.fixture(scope="session")
def dns_valkey(tmp_path_factory):
    url, stop = start_valkey(tmp_path_factory.mktemp("valkey-dns"))
    yield url
    stop()


@pytest.fixture(scope="session")
def pdns(tmp_path_factory):
    server = start_pdns(tmp_path_factory.mktemp("pdns"), [ZONE, TEST_ZONE])
    yield server
    server.stop()


@pytest.fixture
def pdns_zone(pdns):
    """The PowerDNS zones, emptied (all but the SOA) before the test."""
    pdns.reset_zone(ZONE)
    pdns.reset_zone(TEST_ZONE)
    return pdns


@pytest.fixture(scope="session")
def dns_valkey_cluster(tmp_path_factory):
    url, stop = start_valkey_cluster(tmp_path_factory.mktemp("valkey-cluster-dns"))
    yield url
    stop()


@pytest.fixture
def dns_store(request) -> tuple[str, bool]:
    """``(url, is_cluster)``: one Valkey, unless parametrized with ``"cluster"``
    (``pytest.mark.parametrize("dns_store", ["single", "cluster"], indirect=True)``)."""
    if getattr(request, "param", "single") == "cluster":
        return request.getfixturevalue("dns_valkey_cluster"), True
    return request.getfixturevalue("dns_valkey"), False


@pytest.fixture
async def redis_client(dns_store):
    url, cluster = dns_store
    client = await connect(url, cluster=cluster)
    yield client
    await client.aclose()


@pytest.fixture
def keys():
    return Keys(f"d{secrets.token_hex(4)}")


@dataclass
class DnsEnv:
    """A DNS service built in-process, and what tests poke at."""

    redis: object
    keys: Keys
    hosts: HostRegistry
    ownership: OwnershipStore
    presence: PresenceStore
    events: MemoryEventLog
    metrics: DnsMetrics
    limiter: MemoryRateLimiter
    services: list[DnsService] = field(default_factory=list)

    def service(self, providers, **overrides) -> DnsService:
        settings = DnsSettings(
            mode="managed",
            base_domain=ZONE,
            zone=ZONE,
            test_zone=overrides.pop("test_zone", None),
            targets=parse_target(overrides.pop("target", "relay.example.net")),
            ttl=60,
            marker=marker_for(self.keys.prefix),
            offline_grace=overrides.pop("offline_grace", 3600.0),
            orphan_grace=overrides.pop("orphan_grace", 0.0),
            max_deletes=overrides.pop("max_deletes", 100),
            sync_interval=overrides.pop("sync_interval", 3600.0),
            sweep_interval=overrides.pop("sweep_interval", 3600.0),
            attempts=overrides.pop("attempts", 3),
            backoff_base=0.01,
            error_backoff=overrides.pop("error_backoff", 0.0),
            backoff_cap=0.05,
            proxied=overrides.pop("proxied", None),
        )
        assert not overrides, overrides
        emitted = []
        service = DnsService(
            settings=settings,
            redis=self.redis,
            keys=self.keys,
            ownership=self.ownership,
            presence=self.presence,
            providers=providers,
            limiter=self.limiter,
            metrics=self.metrics,
            log=structlog.get_logger("dns-test"),
            holder=f"m-{len(self.services)}",
            emit=emitted.append,
            poll_interval=0.02,
        )
        service.emitted = emitted
        self.services.append(service)
        return service


@pytest.fixture
async def dns_env(redis_client, keys):
    env = DnsEnv(
        redis=redis_client,
        keys=keys,
        hosts=HostRegistry(redis_client, keys),
        ownership=OwnershipStore(redis_client, keys),
        presence=PresenceStore(redis_client, keys),
        events=MemoryEventLog(),
        metrics=DnsMetrics(),
        limiter=MemoryRateLimiter(limit=100_000, window=1),
    )
    yield env
    for service in env.services:
        await service.aclose()


@pytest.fixture
async def cluster(tmp_path, dns_valkey):
    """Real `relay serve` processes (tests.e2e.harness) on the DNS tests' store."""
    c = Cluster(tmp_path, dns_valkey, prefix=f"e2edns{secrets.token_hex(4)}")
    yield c
    c.stop()
