"""`relay directory rebuild`: rebuild the presence projection on a running relay.

Like `relay hosts`, it talks to a running relay's admin API (``--server``, the admin token
from ``RELAY_ADMIN_TOKEN`` or ``<data-dir>/admin-token``): ``POST /api/directory/rebuild``.
The relay reads the whole event log, folds it, swaps the projection and prints what
changed (``--dry-run`` only reports). Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["add_directory_parser", "run_directory_command"]

# A rebuild reads the whole log; give a large one time.
_TIMEOUT_S = 300.0


def add_directory_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay directory rebuild` to the command line."""
    directory = sub.add_parser("directory", help="maintain the directory's projections")
    actions = directory.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser(
        "rebuild", help="rebuild presence from the event log; prints what changed"
    )
    rebuild.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    rebuild.add_argument(
        "--server", default=os.environ.get("RELAY_SERVER", "http://127.0.0.1:8080")
    )
    rebuild.add_argument("--data-dir", default=os.environ.get("RELAY_DATA_DIR", ".relay"))


def run_directory_command(args: argparse.Namespace) -> int:
    """Run `relay directory rebuild`; prints the report as JSON."""
    from relay.cli.client import api_request, print_json  # noqa: PLC0415

    params = {"dry_run": "1"} if args.dry_run else {}
    ok, payload = api_request(
        args, "POST", "/api/directory/rebuild", params=params, timeout=_TIMEOUT_S
    )
    if not ok:
        return 1
    print_json(payload)
    return 0
