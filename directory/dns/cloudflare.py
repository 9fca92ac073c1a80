"""Cloudflare API v4 as a DNS provider (records of one zone, by zone id and API token).

Calls::

    GET  {base}/zones/{zone_id}/dns_records?page=N&per_page=M[&name=fqdn]   list, paginated
    POST {base}/zones/{zone_id}/dns_records/batch                           ensure / delete

Writes go through the batch endpoint (all plans; 200 records per batch on the free plan),
which Cloudflare runs in one transaction in the order deletes, patches, puts, posts. One
call is therefore all or nothing, and retrying it cannot leave half a change behind.

Ownership lives in the record's ``comment``. ``proxied`` records get TTL 1 (Cloudflare's
"automatic"), which is all a proxied record accepts. Every answer is the v4 envelope
``{success, errors: [{code, message}], result, result_info}``; an error answer becomes a
typed error carrying the first Cloudflare error code.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

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
from directory.errors import DnsBadResponse, DnsRejected, InvalidInput

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DEFAULT_API_BASE", "CloudflareProvider"]

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
_PER_PAGE = 500
# A zone with more pages than this is not one this relay could have written.
_MAX_PAGES = 1000
_AUTO_TTL = 1
# Cloudflare's error code for "Record does not exist".
_RECORD_MISSING = "81044"


class _Error(msgspec.Struct, frozen=True):
    code: int | str | None = None
    message: str = ""


class _Record(msgspec.Struct, frozen=True):
    id: str
    name: str
    type: str
    content: str = ""
    ttl: int = _AUTO_TTL
    proxied: bool | None = None
    comment: str | None = None
    modified_on: str | None = None


class _ResultInfo(msgspec.Struct, frozen=True):
    page: int = 1
    total_pages: int = 1


class _ListAnswer(msgspec.Struct, frozen=True):
    success: bool
    result: list[_Record] | None = None
    result_info: _ResultInfo | None = None
    errors: list[_Error] = []


class _BatchResult(msgspec.Struct, frozen=True):
    deletes: list[_Record] | None = None
    puts: list[_Record] | None = None
    posts: list[_Record] | None = None


class _BatchAnswer(msgspec.Struct, frozen=True):
    success: bool
    result: _BatchResult | None = None
    errors: list[_Error] = []


class _Envelope(msgspec.Struct, frozen=True):
    success: bool = False
    errors: list[_Error] = []


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()  # 3.11 reads the "Z" suffix
    except ValueError:
        return None


def _from_api(record: _Record) -> DnsRecord:
    content = record.content
    if record.type == "CNAME":
        content = content.rstrip(".").lower()
    return DnsRecord(
        name=record.name.rstrip(".").lower(),
        type=record.type,
        content=content,
        ttl=record.ttl,
        proxied=record.proxied,
        comment=record.comment,
        id=record.id,
        modified_at=_timestamp(record.modified_on),
    )


class CloudflareProvider(DnsProvider):
    """One Cloudflare zone. ``transport`` is injected (tests pass ``httpx.MockTransport``)."""

    name = "cloudflare"

    def __init__(
        self,
        zone: str,
        *,
        zone_id: str,
        api_token: str,
        api_base: str = DEFAULT_API_BASE,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_batch: int = 200,
    ) -> None:
        super().__init__(normalize_name(zone))
        if not zone_id or not zone_id.isalnum():
            raise InvalidInput("a Cloudflare zone id is a string of letters and digits")
        if not api_token:
            raise InvalidInput("a Cloudflare API token is required")
        self.max_batch = max_batch
        self._path = f"/zones/{zone_id}/dns_records"
        self._client = httpx.AsyncClient(
            base_url=api_base.rstrip("/"),
            headers={"Authorization": f"Bearer {api_token}", "Accept": "application/json"},
            transport=transport,
            timeout=timeout,
        )

    async def list(self, name: str | None = None) -> Records:
        """Every record of the zone (or at ``name``), following ``result_info`` pages."""
        self._check_open()
        records: list[DnsRecord] = []
        page = 1
        while True:
            params: dict[str, str | int] = {"page": page, "per_page": _PER_PAGE}
            if name is not None:
                params["name"] = name
            answer = await self._call("list records", "GET", self._path, _ListAnswer, params=params)
            if answer.result is None:
                raise DnsBadResponse(
                    "cloudflare: list records: answer without a result", provider=self.name
                )
            records += [_from_api(r) for r in answer.result]
            info = answer.result_info
            if info is None or page >= info.total_pages or not answer.result:
                return records
            page += 1
            if page > _MAX_PAGES:
                raise DnsBadResponse(
                    f"cloudflare: list records: more than {_MAX_PAGES} pages", provider=self.name
                )

    async def ensure(self, upserts: Sequence[Upsert]) -> Records:
        """Create (posts) and overwrite (puts) in one batch; returns the written records."""
        self._check_open()
        if not upserts:
            return []
        posts = [self._body(u.record) for u in upserts if u.existing is None]
        puts = [
            {"id": u.existing.id, **self._body(u.record)} for u in upserts if u.existing is not None
        ]
        body: dict[str, Any] = {}
        if posts:
            body["posts"] = posts
        if puts:
            body["puts"] = puts
        answer = await self._call(
            f"write {len(upserts)} records", "POST", self._path + "/batch", _BatchAnswer, json=body
        )
        result = answer.result or _BatchResult()
        written = [_from_api(r) for r in (result.puts or []) + (result.posts or [])]
        if len(written) != len(upserts):
            raise DnsBadResponse(
                f"cloudflare: batch wrote {len(written)} records, {len(upserts)} were sent",
                provider=self.name,
            )
        return written

    async def delete(self, records: Sequence[DnsRecord]) -> None:
        """Delete by record id in one batch."""
        self._check_open()
        if not records:
            return
        missing = [r.name for r in records if not r.id]
        if missing:
            raise InvalidInput(f"cloudflare: cannot delete records without an id: {missing}")
        body = {"deletes": [{"id": r.id} for r in records]}
        try:
            await self._call(
                f"delete {len(records)} records",
                "POST",
                self._path + "/batch",
                _BatchAnswer,
                json=body,
            )
        except DnsRejected as exc:
            # Deleting one record that is already gone is what we wanted. (In a batch the
            # caller retries record by record, so each missing one ends up here.)
            if len(records) == 1 and exc.provider_code == _RECORD_MISSING:
                return
            raise

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if not self._closed:
            await self._client.aclose()
        await super().aclose()

    def _body(self, record: DnsRecord) -> dict[str, Any]:
        proxied = bool(record.proxied)
        return {
            "name": record.name,
            "type": record.type,
            "content": record.content,
            "ttl": _AUTO_TTL if proxied else record.ttl,
            "proxied": proxied,
            "comment": record.comment or "",
        }

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        cls: type[Any],
        *,
        json: object | None = None,
        params: dict[str, str | int] | None = None,
    ) -> Any:  # noqa: ANN401 - an instance of ``cls``
        response = await call_api(
            self._client, self.name, what, method, path, json=json, params=params
        )
        if response.is_error:
            envelope = _safe_envelope(response)
            first = envelope.errors[0] if envelope.errors else None
            raise error_for_status(
                self.name,
                what,
                response,
                detail=first.message if first and first.message else None,
                provider_code=None if first is None or first.code is None else str(first.code),
            )
        answer = decode_body(self.name, what, response, cls)
        if not answer.success:
            # A 200 that says it failed: report Cloudflare's own error, never pass it off.
            first = answer.errors[0] if answer.errors else _Error()
            raise DnsBadResponse(
                f"cloudflare: {what}: success=false: {first.message or 'no message'}",
                provider=self.name,
                status=response.status_code,
                provider_code=None if first.code is None else str(first.code),
                retryable=False,
            )
        return answer


def _safe_envelope(response: httpx.Response) -> _Envelope:
    try:
        return msgspec.json.decode(response.content, type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Envelope()
