"""DNS benchmark against a real PowerDNS Authoritative server (sqlite3 backend, loopback).

Figures:

1. full sync of N hosts (default 10,000) into an empty zone: time, API calls (reads and
   writes), records created;
2. a second full sync with nothing to do: its API calls (goal: reads only, zero writes);
3. 1,000 reconnects of live hosts (claim, Connected, release, Disconnected, converge):
   API calls (goal: zero);
4. the worker converging 1,000 freshly created hosts (no sync): API calls and time.

Every HTTP request the provider makes goes through a counting transport, so the numbers
are what the PowerDNS server saw. Needs ``pdns_server`` (``scripts/ensure-test-deps.sh``).

    .venv/bin/python -m loadtest.dns_bench [--hosts 10000] [--reconnects 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import structlog

from directory.dns.powerdns import PowerDnsProvider
from directory.dns.ratelimit import RedisRateLimiter
from directory.dns.records import marker_for, parse_target
from directory.dns.service import DnsService
from directory.dns.settings import DnsSettings
from directory.dns.state import DnsKeys
from directory.dns.telemetry import DnsMetrics
from directory.events import Connected, Disconnected
from directory.hosts import HostRegistry
from directory.keys import Keys
from directory.ownership import OwnershipStore
from directory.presence import PresenceStore
from directory.store import connect
from tests.dns.pdns import start_pdns
from tests.servers import start_valkey

ZONE = "bench.test"


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts requests by method on their way to the server."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls[request.method] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def snapshot(self) -> Counter[str]:
        return Counter(self.calls)


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    reads = after["GET"] - before["GET"]
    writes = sum(after.values()) - sum(before.values()) - reads
    return {"calls": reads + writes, "reads": reads, "writes": writes}


async def create_hosts(hosts: HostRegistry, count: int, prefix: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 500):
        batch = await asyncio.gather(
            *(hosts.create(f"{prefix}{i}") for i in range(start, min(count, start + 500)))
        )
        ids += [record.id for record, _ in batch]
    return ids


async def run(args: argparse.Namespace, valkey_url: str, pdns) -> dict:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    redis = await connect(valkey_url)
    await redis.flushall()
    keys = Keys("bench")
    hosts = HostRegistry(redis, keys)
    ownership = OwnershipStore(redis, keys)
    transport = CountingTransport()
    settings = DnsSettings(
        mode="managed",
        base_domain=ZONE,
        zone=ZONE,
        targets=parse_target("relay.example.net"),
        ttl=300,
        marker=marker_for(keys.prefix),
        orphan_grace=0,
        max_deletes=100,
    )
    provider = PowerDnsProvider(
        ZONE,
        api_url=pdns.api_url,
        api_key=pdns.api_key,
        marker=settings.marker,
        transport=transport,
    )
    dns_keys = DnsKeys(keys)
    service = DnsService(
        settings=settings,
        redis=redis,
        keys=keys,
        ownership=ownership,
        presence=PresenceStore(redis, keys),
        providers={ZONE: provider},
        limiter=RedisRateLimiter(redis, dns_keys.rate(), dns_keys.rate_pause()),
        metrics=DnsMetrics(),
        log=structlog.get_logger("dns-bench"),
        holder="bench",
    )
    print(f"creating {args.hosts} hosts ...", flush=True)
    t = time.perf_counter()
    ids = await create_hosts(hosts, args.hosts, "h")
    print(f"  {time.perf_counter() - t:.1f} s")

    before = transport.snapshot()
    t = time.perf_counter()
    report = await service.sync()
    took = time.perf_counter() - t
    first = delta(transport.snapshot(), before)
    print(
        f"full sync of {args.hosts} hosts: {took:.2f} s, {first['calls']} API calls "
        f"({first['reads']} reads, {first['writes']} writes); created {report.created}, "
        f"errors {report.errors}"
    )
    rrsets = [r for r in pdns.zone(ZONE)["rrsets"] if r["type"] == "CNAME"]
    print(f"  records in the zone afterwards: {len(rrsets)}")
    figures: dict = {"hosts": args.hosts, "reconnects": args.reconnects}
    figures["first_sync"] = first | {"seconds": took, "records": len(rrsets)}

    before = transport.snapshot()
    t = time.perf_counter()
    report = await service.sync()
    took = time.perf_counter() - t
    second = delta(transport.snapshot(), before)
    print(
        f"second sync, nothing to do: {took:.2f} s, {second['calls']} API calls "
        f"({second['reads']} reads, {second['writes']} writes); "
        f"already_synced {report.already_synced}"
    )
    figures["second_sync"] = second | {"seconds": took}

    before = transport.snapshot()
    rng = random.Random(7)
    t = time.perf_counter()
    for i in range(args.reconnects):
        host_id = rng.choice(ids)
        epoch = await ownership.claim(host_id, "m1", 30_000)
        connected = Connected(
            host_id=host_id, machine_id="m1", epoch=epoch, remote_addr="x", agent_version="b"
        )
        await service.handle_events([(f"{i}-0", connected)])
        await ownership.release(host_id, "m1", epoch)
        gone = Disconnected(host_id=host_id, machine_id="m1", epoch=epoch, reason="closed")
        await service.handle_events([(f"{i}-1", gone)])
        if i % 50 == 49:  # the worker takes dirty hosts in batches
            await service.converger.converge(await service.states.pop_dirty(200))
    await service.converger.converge(await service.states.pop_dirty(args.hosts))
    took = time.perf_counter() - t
    churn = delta(transport.snapshot(), before)
    print(
        f"{args.reconnects} reconnects of live hosts: {churn['calls']} API calls "
        f"({churn['writes']} writes) in {took:.2f} s"
    )
    figures["reconnects_api"] = churn | {"seconds": took}

    fresh = await create_hosts(hosts, 1000, "new")
    before = transport.snapshot()
    t = time.perf_counter()
    await service.states.mark_dirty(fresh)
    while ids_ := await service.states.pop_dirty(settings.batch_hosts):
        await service.converger.converge(ids_)
    took = time.perf_counter() - t
    worker = delta(transport.snapshot(), before)
    print(
        f"worker converging 1000 new hosts: {worker['calls']} API calls "
        f"({worker['reads']} reads, {worker['writes']} writes) in {took:.2f} s"
    )
    figures["converge_new"] = worker | {"seconds": took}
    await service.aclose()
    await transport.aclose()
    await redis.aclose()
    return figures


def available() -> bool:
    """Whether PowerDNS (pdns_server) is installed here (scripts/ensure-test-deps.sh)."""
    from tests.dns.pdns import pdns_binary

    return pdns_binary() is not None


def measure(hosts: int = 10_000, reconnects: int = 1_000) -> dict:
    """Start Valkey and PowerDNS, run the benchmark (printing as it goes); its figures."""
    args = argparse.Namespace(hosts=hosts, reconnects=reconnects)
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp:
        root = Path(tmp)
        (root / "valkey").mkdir()
        (root / "pdns").mkdir()
        valkey_url, stop_valkey = start_valkey(root / "valkey")
        try:
            pdns = start_pdns(root / "pdns", [ZONE])
            try:
                return asyncio.run(run(args, valkey_url, pdns))
            finally:
                pdns.stop()
        finally:
            stop_valkey()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--reconnects", type=int, default=1_000)
    args = parser.parse_args()
    measure(args.hosts, args.reconnects)


if __name__ == "__main__":
    main()
