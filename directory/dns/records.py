"""DNS records as the relay sees them, and what each host should have. Pure: no I/O.

Every provider speaks in :class:`DnsRecord`: one name, one type, one content. Names are
fully qualified, lowercase, without the trailing dot (``abc123xy.example.com``); CNAME
contents are names in the same form. Providers convert to and from their own shapes
(PowerDNS wants trailing dots, Cloudflare does not).

Ownership: a record is ours when its comment is exactly the deployment's marker
(:func:`marker_for`). Records without it were made by someone else and are never
updated or deleted, whatever their name.

What a host should have (:func:`desired_records`): in managed mode one record per target
value at ``<slug>.<base>``: a name as target gives a CNAME, addresses give A and/or AAAA.
A host keeps its records while online and through disconnects shorter than the offline
grace (:func:`keeps_records`), so reconnect churn never touches DNS.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import msgspec

from directory.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "MANAGED_TYPES",
    "DnsRecord",
    "RecordKey",
    "Target",
    "describe",
    "desired_records",
    "keeps_records",
    "marker_for",
    "normalize_name",
    "parse_target",
]

# The types the relay ever writes; a sync only considers these for orphans.
MANAGED_TYPES = frozenset({"A", "AAAA", "CNAME"})
_MAX_NAME = 253
_MAX_LABEL = 63
_MARKER_PREFIX = "relay-directory:"

RecordKey = tuple[str, str]
"""``(name, type)``: at most one record of ours per key."""


class DnsRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One DNS record in a zone.

    ``comment`` carries the ownership marker; ``id`` is the provider's record id where it
    has one (Cloudflare), needed to update or delete; ``modified_at`` (unix seconds) is when
    the provider last changed it, if it says, so a sync can spare records younger than its
    grace. ``proxied`` is Cloudflare's orange cloud; None where the provider has no such thing.
    """

    name: str
    type: str
    content: str
    ttl: int = 300
    proxied: bool | None = None
    comment: str | None = None
    id: str | None = None
    modified_at: float | None = None

    @property
    def key(self) -> RecordKey:
        """``(name, type)``."""
        return (self.name, self.type)

    def is_ours(self, marker: str) -> bool:
        """Whether the record carries our ownership marker (exactly)."""
        return self.comment is not None and self.comment.strip() == marker

    def matches(self, desired: DnsRecord) -> bool:
        """Whether this (actual) record already is ``desired``: nothing to write."""
        if self.key != desired.key or self.comment != desired.comment:
            return False
        if self.content.lower() != desired.content.lower():
            return False
        if desired.proxied is not None and self.proxied != desired.proxied:
            return False
        # A proxied Cloudflare record reports TTL 1 ("automatic") whatever was asked.
        return bool(desired.proxied) or self.ttl == desired.ttl

    def bare(self) -> DnsRecord:
        """The record without provider bookkeeping (id, modified_at), for comparisons."""
        return msgspec.structs.replace(self, id=None, modified_at=None)


class Target(msgspec.Struct, frozen=True):
    """One value records point at: ``type`` is CNAME, A or AAAA."""

    type: str
    content: str


def marker_for(deployment: str) -> str:
    """The comment that marks a record as written by this deployment of the relay.

    ``deployment`` is the key prefix, so two deployments sharing a zone never delete each
    other's records.
    """
    return _MARKER_PREFIX + deployment


def normalize_name(name: str) -> str:
    """A domain name in our form (lowercase, no trailing dot), or :class:`InvalidInput`."""
    if not isinstance(name, str):
        raise InvalidInput(f"a domain name must be a string, not {type(name).__name__}")
    normalized = name.strip().rstrip(".").lower()
    if not normalized or len(normalized) > _MAX_NAME or not normalized.isascii():
        raise InvalidInput(f"{name!r} is not a domain name")
    for label in normalized.split("."):
        if not label or len(label) > _MAX_LABEL or label.startswith("-") or label.endswith("-"):
            raise InvalidInput(f"{name!r} is not a domain name (label {label!r})")
        if not all(c.isalnum() or c in "-_*" for c in label):
            raise InvalidInput(f"{name!r} is not a domain name (label {label!r})")
    return normalized


def parse_target(value: str) -> tuple[Target, ...]:
    """What ``--dns-target`` says records point at.

    A name gives one CNAME; addresses (comma-separated, at most one IPv4 and one IPv6, as
    Fly gives a dedicated pair) give A and AAAA. A name and addresses cannot be mixed: a
    CNAME must be alone at its name.
    """
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise InvalidInput("a DNS target is required: a host name, or IPv4/IPv6 addresses")
    targets: list[Target] = []
    for part in parts:
        try:
            address = ipaddress.ip_address(part)
        except ValueError:
            targets.append(Target("CNAME", normalize_name(part)))
            continue
        targets.append(Target("A" if address.version == 4 else "AAAA", str(address)))
    types = [t.type for t in targets]
    if "CNAME" in types and len(targets) > 1:
        raise InvalidInput(f"DNS target {value!r}: a name must be the only target (CNAME)")
    if len(set(types)) != len(types):
        raise InvalidInput(f"DNS target {value!r}: at most one IPv4 and one IPv6 address")
    return tuple(targets)


def desired_records(
    fqdn: str, targets: Sequence[Target], *, ttl: int, marker: str, proxied: bool | None = None
) -> list[DnsRecord]:
    """The records ``fqdn`` should have, all carrying our marker."""
    return [
        DnsRecord(
            name=fqdn, type=t.type, content=t.content, ttl=ttl, proxied=proxied, comment=marker
        )
        for t in targets
    ]


def keeps_records(
    *, exists: bool, online: bool, offline_since: float | None, now: float, grace: float
) -> bool:
    """Whether a host should have records now.

    A removed host has none. An online host has them. An offline one keeps them until it
    has been offline for longer than ``grace`` (``offline_since`` is its last disconnect,
    or its creation if it never connected), so short disconnects cost no DNS writes.
    """
    if not exists:
        return False
    if online or offline_since is None:
        return True
    return now - offline_since <= grace


def describe(records: Iterable[DnsRecord]) -> list[str]:
    """``"<name> <TYPE> <content>"`` per record, sorted: how the API shows them."""
    return sorted(f"{r.name} {r.type} {r.content}" for r in records)
