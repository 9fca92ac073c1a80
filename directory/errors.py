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
    └── Superseded                   a newer epoch owns the host         409 superseded

Every error carries ``http_status`` (what a client of the relay's API should see) and a
stable machine-readable ``code``, so the boundary that catches a ``DirectoryError`` needs no
table of its own. Errors of the redis client are translated once, where the adapters call
the store (:func:`directory.store.translate_errors`), always with ``raise ... from exc`` so
the original cause stays on the traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from directory.models import OwnerRecord

__all__ = [
    "CorruptRecord",
    "DirectoryError",
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

    def __init__(self, message: str, owner: OwnerRecord) -> None:
        super().__init__(message)
        self.owner = owner
