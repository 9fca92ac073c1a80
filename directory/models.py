"""Records the directory stores, as frozen ``msgspec`` structs, and their JSON codec.

Each struct is tagged (``"kind"``) so a value can never be decoded as the wrong record,
and every decode validates: a value that is not what this code wrote raises
:class:`~directory.errors.CorruptRecord`, never a msgspec error.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from directory.errors import CorruptRecord

__all__ = [
    "HostRecord",
    "OwnerRecord",
    "TakeoverNotice",
    "decode",
    "encode",
]


class HostRecord(msgspec.Struct, gc=False, frozen=True, tag_field="kind", tag="host"):
    """A registered host. ``token_hash`` is the sha256 hex digest of its token.

    ``test`` marks a test host: it may use the reserved test prefixes, and its DNS records
    live in the test zone when one is configured.
    """

    id: str
    name: str
    slug: str
    token_hash: str
    created_at: float
    version: int = 1
    test: bool = False


class OwnerRecord(msgspec.Struct, gc=False, frozen=True, tag_field="kind", tag="owner"):
    """Which machine holds a host's tunnel, and with which fencing epoch."""

    machine_id: str
    epoch: int


class TakeoverNotice(msgspec.Struct, gc=False, frozen=True, tag_field="kind", tag="takeover"):
    """Published when a machine claims a host: older epochs elsewhere must close."""

    host_id: str
    machine_id: str
    epoch: int


_T = TypeVar("_T", HostRecord, OwnerRecord, TakeoverNotice)

_ENCODER = msgspec.json.Encoder()


def encode(record: HostRecord | OwnerRecord | TakeoverNotice) -> bytes:
    """The stored (JSON) form of a record. Deterministic: same record, same bytes."""
    return _ENCODER.encode(record)


def decode(cls: type[_T], data: bytes | str, *, where: str = "") -> _T:
    """Decode and validate a stored value; a bad value raises CorruptRecord naming ``where``."""
    try:
        return msgspec.json.decode(data, type=cls)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        at = f" at {where}" if where else ""
        raise CorruptRecord(f"stored {cls.__name__}{at} does not decode: {exc}") from exc
