"""`relay dns ...`: DNS commands against a running relay's API (like `relay hosts`).

::

    relay dns sync [--dry-run]   full sync now; prints {created, updated, deleted, ...}
    relay dns records            every record of the managed zones (ours marked)
    relay dns rm FQDN            delete our record(s) at FQDN (never someone else's)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import quote

from relay.cli.client import api_request, print_json

if TYPE_CHECKING:
    import argparse

__all__ = ["add_dns_commands", "run_dns_command"]

# A full sync of a large zone waits on the provider's rate limit: allow it time.
_SYNC_TIMEOUT = 600.0


def add_dns_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay dns`` and its actions to the top-level subcommands."""
    dns = sub.add_parser("dns", help="DNS records of hosts on a running relay")
    actions = dns.add_subparsers(dest="action", required=True)
    sync = actions.add_parser("sync", help="create missing, update drifted, delete orphans")
    sync.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    actions.add_parser("records", help="list the records of the managed zones")
    rm = actions.add_parser("rm", help="delete our record(s) at a name")
    rm.add_argument("fqdn")
    for p in actions.choices.values():
        p.add_argument("--server", default=os.environ.get("RELAY_SERVER", "http://127.0.0.1:8080"))
        p.add_argument("--data-dir", default=os.environ.get("RELAY_DATA_DIR", ".relay"))


def run_dns_command(args: argparse.Namespace) -> int:
    """Run one `relay dns` action; prints JSON, returns the exit status."""
    if args.action == "sync":
        params = {"dry_run": "1"} if args.dry_run else {}
        ok, payload = api_request(
            args, "POST", "/api/dns/sync", params=params, timeout=_SYNC_TIMEOUT
        )
    elif args.action == "records":
        ok, payload = api_request(args, "GET", "/api/dns/records")
    else:
        ok, payload = api_request(args, "DELETE", f"/api/dns/records/{quote(args.fqdn, safe='')}")
    if not ok:
        return 1
    print_json(payload)
    # A sync that met errors says so in its exit status, for scripts and cron.
    failed = isinstance(payload, dict) and bool(payload.get("errors"))
    return 1 if args.action == "sync" and failed else 0
