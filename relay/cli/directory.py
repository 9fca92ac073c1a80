"""`relay directory rebuild`: rebuild the presence projection on a running relay.

Like `relay hosts`, it talks to a running relay's admin API (``--server``, the admin token
from ``RELAY_ADMIN_TOKEN`` or ``<data-dir>/admin-token``): ``POST /api/directory/rebuild``.
The relay reads the whole event log, folds it, swaps the projection and prints what
changed (``--dry-run`` only reports).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import msgspec

from relay.cli.client import AdminClient, add_admin_options
from relay.cli.output import for_people, print_json, render_fields

if TYPE_CHECKING:
    import argparse

__all__ = ["add_directory_parser", "run_directory_command"]

# A rebuild reads the whole log; give a large one time.
_TIMEOUT_S = 300.0


class RebuildAnswer(msgspec.Struct):
    """The counts of a rebuild's report (the answer has more)."""

    complete: bool
    events: int
    hosts: int


def add_directory_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay directory rebuild` to the command line."""
    directory = sub.add_parser("directory", help="maintain the directory's projections")
    actions = directory.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser(
        "rebuild", help="rebuild presence from the event log; prints what changed"
    )
    rebuild.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    add_admin_options(rebuild)


def run_directory_command(args: argparse.Namespace) -> int:
    """Run `relay directory rebuild`; prints the report."""
    params = {"dry_run": "1"} if args.dry_run else {}
    with AdminClient(args, timeout=_TIMEOUT_S) as api:
        payload = api.call("POST", "/api/directory/rebuild", params=params)
        api.expect(payload, RebuildAnswer, "POST /api/directory/rebuild")
    if for_people(args):
        sys.stdout.write(render_fields(payload))
    else:
        print_json(payload)
    return 0
