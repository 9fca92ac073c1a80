"""`relay dns ...`: DNS commands against a running relay's API (like `relay hosts`).

::

    relay dns sync [--dry-run]   full sync now; prints {created, updated, deleted, ...}
    relay dns records            every record of the managed zones (ours marked)
    relay dns rm FQDN            delete our record(s) at FQDN (never someone else's)

A sync that met errors exits 1, for scripts and cron.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec

from relay.cli.client import AdminClient, add_admin_options
from relay.cli.output import for_people, print_json, render_fields, render_table

if TYPE_CHECKING:
    import argparse

__all__ = ["add_dns_commands", "run_dns_command"]

# A full sync of a large zone waits on the provider's rate limit: allow it time.
_SYNC_TIMEOUT = 600.0


class SyncAnswer(msgspec.Struct):
    """The counts of ``POST /api/dns/sync`` (the answer has more)."""

    created: int
    updated: int
    deleted: int
    errors: int


class RecordRow(msgspec.Struct):
    """One record of ``GET /api/dns/records``."""

    zone: str
    name: str
    type: str
    content: str
    ttl: int | None = None
    ours: bool = False


class Records(msgspec.Struct):
    """Answer to ``GET /api/dns/records``."""

    records: list[RecordRow]


def add_dns_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay dns`` and its actions to the top-level subcommands."""
    dns = sub.add_parser("dns", help="DNS records of hosts on a running relay")
    actions = dns.add_subparsers(dest="action", required=True)
    sync = actions.add_parser("sync", help="create missing, update drifted, delete orphans")
    sync.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    actions.add_parser("records", help="list the records of the managed zones")
    rm = actions.add_parser("rm", help="delete our record(s) at a name")
    rm.add_argument("fqdn", help="the record's full name")
    for p in actions.choices.values():
        add_admin_options(p)


def run_dns_command(args: argparse.Namespace) -> int:
    """Run one `relay dns` action; returns the exit status."""
    people = for_people(args)
    with AdminClient(args) as api:
        if args.action == "sync":
            params = {"dry_run": "1"} if args.dry_run else {}
            payload = api.call("POST", "/api/dns/sync", params=params, timeout=_SYNC_TIMEOUT)
            report = api.expect(payload, SyncAnswer, "POST /api/dns/sync")
            _show(payload, people=people)
            return 1 if report.errors else 0
        if args.action == "records":
            payload = api.get("/api/dns/records")
            records = api.expect(payload, Records, "GET /api/dns/records").records
            if not people:
                print_json(payload)
                return 0
            rows = [
                [r.name, r.type, r.content, str(r.ttl or "-"), "yes" if r.ours else "no"]
                for r in records
            ]
            sys.stdout.write(render_table(["name", "type", "content", "ttl", "ours"], rows))
            return 0
        payload = api.call("DELETE", f"/api/dns/records/{quote(args.fqdn, safe='')}")
        _show(payload, people=people)
        return 0


def _show(payload: object, *, people: bool) -> None:
    if people and isinstance(payload, dict):
        sys.stdout.write(render_fields(payload))
    else:
        print_json(payload)
