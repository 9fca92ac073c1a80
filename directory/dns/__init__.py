"""DNS records for hosts: providers, the plan, the converging worker and the full sync.

::

    records.py    DnsRecord, targets, ownership marker, what a host should have   (pure)
    plan.py       desired vs actual -> create / update / delete / conflicts        (pure)
    provider.py   the provider interface (list / ensure / delete) + HTTP errors
    memory.py, cloudflare.py, powerdns.py   the providers (httpx, injected transport)
    ratelimit.py  one token bucket in Redis shared by all machines
    state.py      per-host status + cached records, dirty set, locks, lease (Redis)
    writer.py     every API call: rate limit, retries, metrics, logs, host status, events
    worker.py     level-triggered convergence of dirty hosts
    sync.py       full sync with its safety rules
    service.py    lifecycle and loops of one machine; what the API asks
    settings.py, inputs.py, telemetry.py

Modes: ``wildcard`` (default) writes nothing per host: one ``*.<base-domain>`` record
points at the relay. ``managed`` keeps one record set per host at ``<slug>.<base-domain>``.
"""

from directory.dns.plan import Plan, apply_plan, plan
from directory.dns.provider import DnsProvider, Upsert
from directory.dns.records import DnsRecord, Target, marker_for, parse_target
from directory.dns.service import DnsService, HostDnsStatus, ZoneRecord
from directory.dns.settings import DnsSettings
from directory.dns.sync import SyncReport

__all__ = [
    "DnsProvider",
    "DnsRecord",
    "DnsService",
    "DnsSettings",
    "HostDnsStatus",
    "Plan",
    "SyncReport",
    "Target",
    "Upsert",
    "ZoneRecord",
    "apply_plan",
    "marker_for",
    "parse_target",
    "plan",
]
