"""PowerDNS Authoritative (HTTP API v1) as a DNS provider, for one zone on one server.

Calls (``X-API-Key`` header)::

    GET   {url}/api/v1/servers/{server_id}/zones/{zone}.    list (the zone with its rrsets)
    PATCH {url}/api/v1/servers/{server_id}/zones/{zone}.    ensure (REPLACE) / delete (DELETE)

PowerDNS groups records into rrsets (one per name and type) and applies a PATCH in one
transaction, so each ensure/delete call is atomic. Ownership is an rrset comment whose
content is our marker. We only ever write one record per rrset; an rrset that holds
several contents is listed as one record whose content joins them, which never matches
what we want, so a converge REPLACEs it with the single record we mean.

``rrset_name`` narrows a listing on servers that support it (4.8+); older servers ignore
it and return the whole zone, which we then filter, so both are correct.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import msgspec

from directory.dns.provider import (
    DnsProvider,
    Records,
    Upsert,
    call_api,
    decode_body,
    error_for_status,
)
from directory.dns.records import DnsRecord, normalize_name
from directory.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ACCOUNT", "PowerDnsProvider"]

ACCOUNT = "relay-directory"
_NAME_TYPES = frozenset({"CNAME", "NS", "MX", "SRV", "PTR", "DNAME"})


class _Record(msgspec.Struct, frozen=True):
    content: str
    disabled: bool = False


class _Comment(msgspec.Struct, frozen=True):
    content: str
    account: str = ""
    modified_at: float | None = None


class _RRSet(msgspec.Struct, frozen=True):
    name: str
    type: str
    ttl: int = 0
    records: list[_Record] = []
    comments: list[_Comment] = []


class _Zone(msgspec.Struct, frozen=True):
    name: str
    rrsets: list[_RRSet]


class _Error(msgspec.Struct, frozen=True):
    error: str = ""


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _content_out(record: DnsRecord) -> str:
    # PowerDNS wants names in contents fully qualified, with the trailing dot.
    return _fqdn(record.content) if record.type in _NAME_TYPES else record.content


def _from_rrset(rrset: _RRSet, marker: str | None) -> DnsRecord | None:
    contents = sorted(r.content for r in rrset.records if not r.disabled)
    if not contents:
        return None
    if rrset.type in _NAME_TYPES:
        contents = [c.rstrip(".").lower() for c in contents]
    ours = next((c for c in rrset.comments if marker is not None and c.content == marker), None)
    first = ours or (rrset.comments[0] if rrset.comments else None)
    return DnsRecord(
        name=rrset.name.rstrip(".").lower(),
        type=rrset.type,
        content=",".join(contents),
        ttl=rrset.ttl,
        comment=None if first is None else first.content,
        modified_at=None if first is None else first.modified_at,
    )


class PowerDnsProvider(DnsProvider):
    """One zone on a PowerDNS Authoritative server. ``transport`` is injected in tests.

    ``marker`` lets a listing pick our comment out of several on one rrset.
    """

    name = "powerdns"

    def __init__(
        self,
        zone: str,
        *,
        api_url: str,
        api_key: str,
        server_id: str = "localhost",
        marker: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_batch: int = 500,
    ) -> None:
        super().__init__(normalize_name(zone))
        if not api_key:
            raise InvalidInput("a PowerDNS API key is required")
        if not server_id or "/" in server_id:
            raise InvalidInput(f"invalid PowerDNS server id {server_id!r}")
        self.max_batch = max_batch
        self._marker = marker
        zone_id = quote(_fqdn(self.zone), safe=".")
        self._path = f"/api/v1/servers/{quote(server_id, safe='')}/zones/{zone_id}"
        self._client = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            transport=transport,
            timeout=timeout,
        )

    async def list(self, name: str | None = None) -> Records:
        """Every rrset of the zone (or at ``name``) as records."""
        self._check_open()
        params: dict[str, str | int] | None = None
        if name is not None:
            params = {"rrset_name": _fqdn(name)}
        zone = await self._call("list records", "GET", params=params)
        records = (_from_rrset(rrset, self._marker) for rrset in zone.rrsets)
        return [r for r in records if r is not None and (name is None or r.name == name)]

    async def ensure(self, upserts: Sequence[Upsert]) -> Records:
        """REPLACE each record's rrset, with our comment, in one PATCH."""
        self._check_open()
        if not upserts:
            return []
        rrsets = [
            {
                "name": _fqdn(u.record.name),
                "type": u.record.type,
                "ttl": u.record.ttl,
                "changetype": "REPLACE",
                "records": [{"content": _content_out(u.record), "disabled": False}],
                "comments": [{"content": u.record.comment or "", "account": ACCOUNT}],
            }
            for u in upserts
        ]
        await self._call(f"write {len(upserts)} records", "PATCH", json={"rrsets": rrsets})
        now = time.time()
        return [msgspec.structs.replace(u.record, modified_at=now) for u in upserts]

    async def delete(self, records: Sequence[DnsRecord]) -> None:
        """DELETE each record's rrset in one PATCH."""
        self._check_open()
        if not records:
            return
        rrsets = [{"name": _fqdn(r.name), "type": r.type, "changetype": "DELETE"} for r in records]
        await self._call(f"delete {len(records)} records", "PATCH", json={"rrsets": rrsets})

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if not self._closed:
            await self._client.aclose()
        await super().aclose()

    async def _call(
        self,
        what: str,
        method: str,
        *,
        json: object | None = None,
        params: dict[str, str | int] | None = None,
    ) -> Any:  # noqa: ANN401 - the zone for GET, None for PATCH
        response = await call_api(
            self._client, self.name, what, method, self._path, json=json, params=params
        )
        if response.is_error:
            try:
                detail = msgspec.json.decode(response.content, type=_Error).error or None
            except (msgspec.DecodeError, msgspec.ValidationError):
                detail = None
            raise error_for_status(self.name, what, response, detail=detail)
        if method == "GET":
            return decode_body(self.name, what, response, _Zone)
        return None
