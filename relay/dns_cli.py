"""`relay dns ...`: DNS commands against a running relay's API (like `relay hosts`).

::

    relay dns sync [--dry-run]   full sync now; prints {created, updated, deleted, ...}
    relay dns records            every record of the managed zones (ours marked)
    relay dns rm FQDN            delete our record(s) at FQDN (never someone else's)
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from relay.admin_client import admin_token

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
    headers = {"Authorization": f"Bearer {admin_token(args.data_dir)}"}
    base = args.server.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=_SYNC_TIMEOUT) as client:
            if args.action == "sync":
                params = {"dry_run": "1"} if args.dry_run else {}
                response = client.post("/api/dns/sync", params=params)
            elif args.action == "records":
                response = client.get("/api/dns/records")
            else:
                response = client.delete(f"/api/dns/records/{quote(args.fqdn, safe='')}")
    except httpx.HTTPError as exc:
        sys.stderr.write(f"relay: cannot reach {base}: {exc}\n")
        return 1
    try:
        payload = response.json()
    except ValueError:
        sys.stderr.write(f"relay: HTTP {response.status_code} from {base}: {response.text[:200]}\n")
        return 1
    if response.is_error:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        sys.stderr.write(
            f"relay: {error.get('message', response.reason_phrase)} "
            f"(HTTP {response.status_code}, {error.get('code', 'error')})\n"
        )
        return 1
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    # A sync that met errors says so in its exit status, for scripts and cron.
    return 1 if args.action == "sync" and payload.get("errors") else 0
