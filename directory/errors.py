"""The one exception tree of the ``directory`` package.

::

    DirectoryError                   base; never raised itself           500 directory_error
    ├── StoreUnavailable             the store cannot be reached now     503 store_unavailable
    ├── StoreError                   the store refused a command         500 store_error
    ├── CorruptRecord                a stored value does not decode      500 corrupt_record
    ├── EmbeddedStoreError           the embedded Valkey failed          500 embedded_store_failed
    ├── InvalidInput                 bad input from a caller             422 invalid_input
    │   └── InvalidSlug              not a usable slug                   422 invalid_slug
    ├── SlugTaken                    another host holds the slug         409 slug_taken
    ├── HostNotFound                 no such host id or slug             404 host_not_found
    ├── Superseded                   a newer epoch owns the host         409 superseded
    └── DnsError                     DNS management failed               502 dns_error
        ├── DnsProviderError         a provider API call failed          502 dns_provider_error
        │   ├── DnsAuthError         credentials refused (401/403)       502 dns_auth_failed
        │   ├── DnsRateLimited       429; ``retry_after`` says when      503 dns_rate_limited
        │   ├── DnsUnavailable       5xx, timeout, connection failure    502 dns_unavailable
        │   ├── DnsRejected          the provider refused the change     502 dns_rejected
        │   └── DnsBadResponse       an answer we cannot understand      502 dns_bad_response
        ├── DnsConflict              a record we do not own holds a name 409 dns_conflict
        ├── DnsRecordNotFound        no record has that name             404 dns_record_not_found
        └── DnsDisabled              wildcard mode: no per-host records  409 dns_disabled

A :class:`DnsProviderError` also carries what the provider said: ``status`` (its HTTP
status, None when no answer came), ``provider_code`` (its own error code), ``retryable``
and ``retry_after`` (seconds, from ``Retry-After``). The DNS adapters translate httpx errors
and error answers into it once (:mod:`directory.dns.provider`), with ``raise ... from exc``.

Every error carries ``http_status`` (what a client of the relay's API should see) and a
stable machine-readable ``code``, so the boundary that catches a ``DirectoryError`` needs no
table of its own. Errors of the redis client are translated once, where the adapters call
the store (:func:`directory.store.translate_errors`), always with ``raise ... from exc`` so
the original cause stays on the traceback.
"""

from __future__ import annotations

__all__ = [
    "CorruptRecord",
    "DirectoryError",
    "DnsAuthError",
    "DnsBadResponse",
    "DnsConflict",
    "DnsDisabled",
    "DnsError",
    "DnsProviderError",
    "DnsRateLimited",
    "DnsRecordNotFound",
    "DnsRejected",
    "DnsUnavailable",
    "EmbeddedStoreError",
    "HostNotFound",
    "InvalidInput",
    "InvalidSlug",
    "SlugTaken",
    "StoreError",
    "StoreUnavailable",
    "Superseded",
]


class DirectoryError(Exception):
    """Base of every error raised by the directory."""

    http_status: int = 500
    code: str = "directory_error"


class StoreUnavailable(DirectoryError):
    """The store is unreachable, timed out, or still loading its data: try again later."""

    http_status = 503
    code = "store_unavailable"


class StoreError(DirectoryError):
    """The store answered with an error (a bug or a misconfigured server, not an outage)."""

    http_status = 500
    code = "store_error"


class CorruptRecord(DirectoryError):
    """A value read from the store is not what this code wrote there."""

    http_status = 500
    code = "corrupt_record"


class EmbeddedStoreError(DirectoryError):
    """The embedded Valkey server could not be started, or failed while running."""

    http_status = 500
    code = "embedded_store_failed"


class InvalidInput(DirectoryError):
    """A caller passed a value the directory cannot accept (the message says why)."""

    http_status = 422
    code = "invalid_input"


class InvalidSlug(InvalidInput):
    """A slug breaks the DNS label rules or is reserved (the message says which rule)."""

    http_status = 422
    code = "invalid_slug"


class SlugTaken(DirectoryError):
    """The slug is already claimed by another host (of any kind)."""

    http_status = 409
    code = "slug_taken"


class HostNotFound(DirectoryError):
    """No host has this id or slug."""

    http_status = 404
    code = "host_not_found"


class Superseded(DirectoryError):
    """A newer connection (higher fencing epoch) already owns the host.

    ``owner`` is the record found in the store, so the caller can say who holds the host.
    """

    http_status = 409
    code = "superseded"

    def __init__(self, message: str, *, machine_id: str, epoch: int) -> None:
        super().__init__(message)
        self.machine_id = machine_id  # who holds the host now, with which epoch
        self.epoch = epoch


class DnsError(DirectoryError):
    """Base of the errors of DNS management (providers, sync, records)."""

    http_status = 502
    code = "dns_error"


class DnsProviderError(DnsError):
    """A call to a DNS provider's API failed; the attributes say how, for retries and status.

    ``status`` is the provider's HTTP status (None when no answer came), ``provider_code``
    its own error code, ``retryable`` whether the same call may succeed later, and
    ``retry_after`` how many seconds the provider asked us to wait (429 ``Retry-After``).
    """

    http_status = 502
    code = "dns_provider_error"
    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        provider_code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.provider_code = provider_code
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after


class DnsAuthError(DnsProviderError):
    """The provider refused our credentials (401/403): retrying will not help."""

    code = "dns_auth_failed"


class DnsRateLimited(DnsProviderError):
    """The provider's rate limit was hit (429): wait ``retry_after`` seconds, then retry."""

    http_status = 503
    code = "dns_rate_limited"
    default_retryable = True


class DnsUnavailable(DnsProviderError):
    """No usable answer: a 5xx, a timeout or a failed connection. Worth retrying."""

    code = "dns_unavailable"
    default_retryable = True


class DnsRejected(DnsProviderError):
    """The provider refused the request itself (a 4xx other than auth and rate limits)."""

    code = "dns_rejected"


class DnsBadResponse(DnsProviderError):
    """The provider answered, but not in the shape its API documents."""

    code = "dns_bad_response"
    default_retryable = True


class DnsConflict(DnsError):
    """A record that does not carry our ownership marker holds the name: we never touch it."""

    http_status = 409
    code = "dns_conflict"


class DnsRecordNotFound(DnsError):
    """No record in the managed zones has this name."""

    http_status = 404
    code = "dns_record_not_found"


class DnsDisabled(DnsError):
    """DNS runs in wildcard mode: there are no per-host records to list, sync or delete."""

    http_status = 409
    code = "dns_disabled"
