"""The one small interface every DNS provider implements, and its HTTP error mapping.

A provider manages records in one zone::

    await provider.list()                   # every record of the zone (or of one name)
    await provider.ensure([Upsert(...)])    # create or update, <= max_batch in ONE request
    await provider.delete([record, ...])    # delete, <= max_batch in ONE request

Each ``ensure``/``delete`` call is a single API request that the provider applies as a
whole (PowerDNS PATCH, Cloudflare's batch endpoint), so a caller may retry a failed call
without creating duplicates; callers split larger changes into chunks of ``max_batch``.
Retries, backoff, rate limiting, metrics and status live in the caller
(:mod:`directory.dns.writer`), not here: a provider makes exactly the calls it is asked to.

Errors: :func:`call_api` sends one request and translates everything that can go wrong
(transport errors, error statuses, bodies that do not parse) into the
:class:`~directory.errors.DnsProviderError` family, once, with ``raise ... from exc``.
A provider refuses use after :meth:`DnsProvider.aclose`.
"""

from __future__ import annotations

import abc
import email.utils
import time
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import msgspec

from directory.errors import (
    DnsAuthError,
    DnsBadResponse,
    DnsProviderError,
    DnsRateLimited,
    DnsRejected,
    DnsUnavailable,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from directory.dns.records import DnsRecord

__all__ = [
    "DnsProvider",
    "Records",
    "Upsert",
    "call_api",
    "decode_body",
    "retry_after_seconds",
]

# The interface has a method named ``list``; inside provider classes that name shadows the
# builtin in annotations, so signatures use this alias.
Records = list["DnsRecord"]

_T = TypeVar("_T")
# Cap what we believe of Retry-After: a bogus "1 day" must not park the worker forever.
_MAX_RETRY_AFTER = 900.0
_BODY_EXCERPT = 300


class Upsert(msgspec.Struct, frozen=True):
    """Make ``record`` exist; ``existing`` is our record it replaces (None: create)."""

    record: DnsRecord
    existing: DnsRecord | None = None

    @property
    def op(self) -> str:
        """``create`` or ``update``, as metrics and events name it."""
        return "create" if self.existing is None else "update"


class DnsProvider(abc.ABC):
    """Records of one zone at one provider. Subclasses implement the three operations."""

    #: Name used in logs, metrics and errors.
    name: str = "provider"
    #: Most records one ensure/delete call may carry.
    max_batch: int = 100

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the {self.name} DNS provider for {self.zone} is closed")

    @abc.abstractmethod
    async def list(self, name: str | None = None) -> Records:
        """Every record of the zone, or only those at ``name``; all types, ours or not."""

    @abc.abstractmethod
    async def ensure(self, upserts: Sequence[Upsert]) -> Records:
        """Create or update records in one request; returns them as written (with ids)."""

    @abc.abstractmethod
    async def delete(self, records: Sequence[DnsRecord]) -> None:
        """Delete these records (as listed, with their ids) in one request."""

    async def aclose(self) -> None:
        """Release the HTTP client; later calls raise RuntimeError."""
        self._closed = True


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return "<unreadable body>"
    text = " ".join(text.split())
    return text[:_BODY_EXCERPT] + ("…" if len(text) > _BODY_EXCERPT else "")


def error_for_status(
    provider: str,
    what: str,
    response: httpx.Response,
    *,
    detail: str | None = None,
    provider_code: str | None = None,
) -> DnsProviderError:
    """The typed error for an error answer (4xx/5xx) from a provider."""
    status = response.status_code
    message = f"{provider}: {what} failed: HTTP {status}: {detail or _excerpt(response)}"
    common: dict[str, Any] = {"provider": provider, "status": status}
    common["provider_code"] = provider_code
    if status in {401, 403}:
        return DnsAuthError(message, **common)
    if status == 429:
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        return DnsRateLimited(message, retry_after=wait, **common)
    if status >= 500 or status in {408, 425}:
        return DnsUnavailable(message, **common)
    return DnsRejected(message, **common)


async def call_api(
    client: httpx.AsyncClient,
    provider: str,
    what: str,
    method: str,
    url: str,
    *,
    json: object | None = None,
    params: dict[str, str | int] | None = None,
) -> httpx.Response:
    """Send one request; a transport failure or an error status raises a DnsProviderError.

    The caller still checks the body (providers report some failures inside a 200).
    """
    content = None if json is None else msgspec.json.encode(json)
    headers = None if content is None else {"Content-Type": "application/json"}
    try:
        response = await client.request(
            method, url, content=content, params=params, headers=headers
        )
    except httpx.TimeoutException as exc:
        raise DnsUnavailable(f"{provider}: {what} timed out: {exc!r}", provider=provider) from exc
    except httpx.TransportError as exc:
        raise DnsUnavailable(
            f"{provider}: {what} failed: cannot reach the API: {exc!r}", provider=provider
        ) from exc
    return response


def decode_body(provider: str, what: str, response: httpx.Response, cls: type[_T]) -> _T:
    """Decode and validate a JSON answer; a body that does not fit raises DnsBadResponse."""
    try:
        return msgspec.json.decode(response.content, type=cls)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DnsBadResponse(
            f"{provider}: {what}: unexpected answer (HTTP {response.status_code}): {exc}; "
            f"body: {_excerpt(response)}",
            provider=provider,
            status=response.status_code,
        ) from exc
