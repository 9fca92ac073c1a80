"""An in-memory DNS provider: for tests, local runs and as the reference behaviour.

It keeps the rules real providers enforce that matter to us (a CNAME is alone at its
name; no two records with the same name, type and content) and counts its calls, so tests
can assert that churn costs nothing. ``fail_with`` makes every call raise an error, to
exercise the failure paths.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import msgspec

from directory.dns.provider import DnsProvider, Records, Upsert
from directory.errors import DnsProviderError, DnsRejected

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from directory.dns.records import DnsRecord

__all__ = ["MemoryProvider"]


class MemoryProvider(DnsProvider):
    """Records of one zone in a dict, keyed by a generated id."""

    name = "memory"
    max_batch = 200

    def __init__(self, zone: str) -> None:
        super().__init__(zone)
        self.records: dict[str, DnsRecord] = {}
        self.calls: dict[str, int] = {"list": 0, "ensure": 0, "delete": 0}
        self.fail_with: DnsProviderError | None = None
        self._ids = itertools.count(1)

    @property
    def writes(self) -> int:
        """Write calls made so far (ensure + delete)."""
        return self.calls["ensure"] + self.calls["delete"]

    def _enter(self, op: str) -> None:
        self._check_open()
        self.calls[op] += 1
        if self.fail_with is not None:
            raise self.fail_with

    def add_foreign(self, record: DnsRecord) -> DnsRecord:
        """Put a record there as someone else would (tests)."""
        stored = msgspec.structs.replace(record, id=f"r{next(self._ids)}")
        self.records[stored.id or ""] = stored
        return stored

    async def list(self, name: str | None = None) -> Records:
        """Every record, or those at ``name``."""
        self._enter("list")
        return [r for r in self.records.values() if name is None or r.name == name]

    async def ensure(self, upserts: Sequence[Upsert]) -> Records:
        """Create or update, all or nothing (checked before anything changes)."""
        self._enter("ensure")
        staged = dict(self.records)
        written: list[DnsRecord] = []
        for upsert in upserts:
            if upsert.existing is not None and upsert.existing.id in staged:
                record_id = upsert.existing.id or ""
                del staged[record_id]
            else:
                record_id = f"r{next(self._ids)}"
            record = msgspec.structs.replace(upsert.record, id=record_id, modified_at=time.time())
            self._check_coexistence(staged.values(), record)
            staged[record_id] = record
            written.append(record)
        self.records = staged
        return written

    async def delete(self, records: Sequence[DnsRecord]) -> None:
        """Delete by id; deleting a record that is already gone is not an error."""
        self._enter("delete")
        for record in records:
            self.records.pop(record.id or "", None)

    @staticmethod
    def _check_coexistence(existing: Iterable[DnsRecord], record: DnsRecord) -> None:
        for other in existing:
            if other.name != record.name:
                continue
            clash = record.type == "CNAME" or other.type == "CNAME"
            if clash or (other.type == record.type and other.content == record.content):
                raise DnsRejected(
                    f"memory: {record.name} {record.type} conflicts with "
                    f"{other.name} {other.type} {other.content}",
                    provider="memory",
                    status=400,
                )
