"""`relay hosts ...`, `relay machines`, `relay events`: admin commands on a running relay.

On a terminal they print tables; with ``--json`` (or when stdout is not a terminal) the
API's JSON as it comes. `relay hosts add` shows the host's token this once, with the agent
command that uses it. `relay events --follow` polls ``GET /api/events?after=`` and prints
new events until Ctrl-C (exit 0); as JSON it prints one event per line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec

from relay.cli.client import AdminClient, add_admin_options
from relay.cli.output import age, for_people, print_json, render_fields, render_table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

__all__ = ["CtrlC", "add_admin_commands", "run_admin_command"]

# How often `relay events --follow` asks for new events when it has caught up.
_FOLLOW_POLL_S = 1.0
_MAX_LIMIT = 1000  # the API's own bound on a page


class DnsView(msgspec.Struct):
    """The ``dns`` part of a host's status."""

    state: str = "disabled"


class HostRow(msgspec.Struct):
    """The fields of a host's status the table shows (the API's answer has more)."""

    id: str
    slug: str
    name: str
    online: bool
    machine_id: str | None = None
    last_connected_at: str | None = None
    last_disconnected_at: str | None = None
    disconnect_reason: str | None = None
    dns: DnsView = msgspec.field(default_factory=DnsView)


class CreatedHost(msgspec.Struct):
    """Answer to ``POST /api/hosts``."""

    id: str
    slug: str
    name: str
    url: str
    token: str


class MachineRow(msgspec.Struct):
    """One entry of ``GET /api/machines``."""

    machine_id: str
    address: str
    state: str
    tunnels: int
    last_seen: str | None = None


class EventRow(msgspec.Struct):
    """The fields every event has; the rest are its details."""

    id: str
    kind: str
    at: str


class EventPage(msgspec.Struct):
    """Answer to ``GET /api/events``."""

    events: list[dict[str, object]]
    next: str | None


def _limit(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {_MAX_LIMIT}, got {raw!r}")
    return int(raw)


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay hosts`, `relay machines` and `relay events`."""
    hosts = sub.add_parser("hosts", help="manage hosts on a running relay")
    actions = hosts.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a host; shows its token this once")
    add.add_argument("name", help="a name for people")
    add.add_argument("--slug", default=None, help="the host's label in <slug>.<base-domain>"
                     " (default: 8 random characters)")  # fmt: skip
    actions.add_parser("list", help="every host: online, where, since when, DNS state")
    show = actions.add_parser("show", help="one host's whole status")
    show.add_argument("ref", metavar="ID", help="host id or slug")
    rm = actions.add_parser("rm", help="remove a host (closes its tunnel, frees its slug)")
    rm.add_argument("ref", metavar="ID", help="host id or slug")
    for parser in actions.choices.values():
        add_admin_options(parser)
    machines = sub.add_parser("machines", help="the live relay machines of the fleet")
    add_admin_options(machines)
    events = sub.add_parser("events", help="the event log, oldest first")
    events.add_argument("--after", metavar="ID", default=None, help="start after this event id")
    events.add_argument(
        "--limit",
        type=_limit,
        default=100,
        metavar="N",
        help=f"events per page, 1-{_MAX_LIMIT} (default 100)",
    )
    events.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new events until Ctrl-C",
    )
    add_admin_options(events)


def run_admin_command(args: argparse.Namespace) -> int:
    """Run `relay hosts ...`, `relay machines` or `relay events`; returns the exit status."""
    with AdminClient(args) as api:
        if args.command == "machines":
            return _machines(api, args)
        if args.command == "events":
            return _events(api, args)
        return _HOSTS[args.action](api, args)


def _hosts_add(api: AdminClient, args: argparse.Namespace) -> int:
    body = {"name": args.name} | ({"slug": args.slug} if args.slug else {})
    payload = api.call("POST", "/api/hosts", body=body)
    host = api.expect(payload, CreatedHost, "POST /api/hosts")
    if not for_people(args):
        print_json(payload)
        return 0
    prog = sys.argv[0] if "/" in sys.argv[0] else "relay"
    block = {"id": host.id, "slug": host.slug, "url": host.url, "token": host.token}
    sys.stdout.write(
        f"host {host.name!r} added\n"
        + render_fields(block, indent="  ")
        + "  (the token is shown this once: only its hash is kept)\n\n"
        "Connect it (--to is your local service):\n"
        f"  {prog} agent --server {api.base} --token {host.token} --to http://127.0.0.1:3000\n"
    )
    return 0


def _hosts_list(api: AdminClient, args: argparse.Namespace) -> int:
    payload = api.get("/api/hosts")
    hosts = api.expect(payload, list[HostRow], "GET /api/hosts")
    if not for_people(args):
        print_json(payload)
        return 0
    rows = [
        [
            h.slug,
            h.name,
            "yes" if h.online else "no",
            h.machine_id or "-",
            _since(h),
            h.dns.state,
        ]
        for h in hosts
    ]
    sys.stdout.write(render_table(["slug", "name", "online", "machine", "since", "dns"], rows))
    return 0


def _since(host: HostRow) -> str:
    if host.online:
        return age(host.last_connected_at)
    if host.last_disconnected_at is None:
        return "never connected"
    return f"{age(host.last_disconnected_at)} ({host.disconnect_reason or 'closed'})"


def _hosts_show(api: AdminClient, args: argparse.Namespace) -> int:
    payload = api.get(f"/api/hosts/{quote(args.ref, safe='')}")
    api.expect(payload, HostRow, "GET /api/hosts/{id}")
    if for_people(args):
        sys.stdout.write(render_fields(payload))
    else:
        print_json(payload)
    return 0


def _hosts_rm(api: AdminClient, args: argparse.Namespace) -> int:
    api.call("DELETE", f"/api/hosts/{quote(args.ref, safe='')}")
    if for_people(args):
        sys.stdout.write(f"host {args.ref} removed\n")
    else:
        print_json({"deleted": args.ref})
    return 0


_HOSTS: dict[str, Callable[[AdminClient, argparse.Namespace], int]] = {
    "add": _hosts_add,
    "list": _hosts_list,
    "show": _hosts_show,
    "rm": _hosts_rm,
}


def _machines(api: AdminClient, args: argparse.Namespace) -> int:
    payload = api.get("/api/machines")
    machines = api.expect(payload, list[MachineRow], "GET /api/machines")
    if not for_people(args):
        print_json(payload)
        return 0
    rows = [[m.machine_id, m.address, m.state, str(m.tunnels), age(m.last_seen)] for m in machines]
    sys.stdout.write(render_table(["id", "address", "state", "tunnels", "last seen"], rows))
    return 0


class _Slugs:
    """Host ids to slugs for the HOST column: a connection's events name only the id."""

    def __init__(self, api: AdminClient) -> None:
        payload = api.get("/api/hosts")
        self.known = {h.id: h.slug for h in api.expect(payload, list[HostRow], "GET /api/hosts")}

    def of(self, event: dict[str, object]) -> str:
        """The event's host by slug where it is known, else by id ("-": none)."""
        host_id, slug = event.get("host_id"), event.get("slug")
        if isinstance(host_id, str) and isinstance(slug, str):
            self.known[host_id] = slug  # a host registered while following
        if isinstance(slug, str):
            return slug
        if isinstance(host_id, str):
            return self.known.get(host_id, host_id)
        return "-"


def _events(api: AdminClient, args: argparse.Namespace) -> int:
    people = for_people(args)
    slugs = _Slugs(api) if people else None
    after: str | None = args.after
    if not args.follow:
        payload, page = _page(api, after, args.limit)
        if slugs is not None:
            rows = [_event_row(e, slugs) for e in page.events]
            sys.stdout.write(render_table(_EVENT_HEADERS, rows))
            if page.next and len(page.events) == args.limit:
                sys.stdout.write(f"more: --after {page.next}\n")
        else:
            print_json(payload)
        return 0
    if people:
        sys.stdout.write("  ".join(h.upper() for h in _EVENT_HEADERS) + "\n")
    ctrl_c = CtrlC()
    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        while True:
            with ctrl_c.deferred():
                _payload, page = _page(api, after, args.limit)
            for event in page.events:
                if slugs is not None:
                    sys.stdout.write("  ".join(_event_row(event, slugs)) + "\n")
                else:
                    print_json(event, compact=True)
            sys.stdout.flush()
            after = page.next or after
            if len(page.events) < args.limit:
                time.sleep(_FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a follow ends
    finally:
        signal.signal(signal.SIGINT, previous)


class CtrlC:
    """A SIGINT handler that holds Ctrl-C back while an API call runs, then raises it.

    Raised inside httpx, a KeyboardInterrupt can land between httpcore taking its pool's
    lock and the ``with`` that would release it; httpcore's clean-up then waits on that
    lock for ever (encode/httpcore#990), and one Ctrl-C left `relay events --follow`
    hanging. A second Ctrl-C during the call interrupts it anyway.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._in_call = False

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        """The signal handler."""
        first = not self.pressed
        self.pressed = True
        if self._in_call and first:
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Run the block with Ctrl-C held back; raise it once the block is done."""
        self._in_call = True
        try:
            yield
        finally:
            self._in_call = False
        if self.pressed:
            raise KeyboardInterrupt


_EVENT_HEADERS = ["id", "at", "kind", "host", "details"]
_NOT_DETAILS = frozenset({"id", "at", "kind", "host_id", "slug", "version"})


def _page(api: AdminClient, after: str | None, limit: int) -> tuple[object, EventPage]:
    """One page of the log: the API's answer as it came, and as checked."""
    params = {"limit": str(limit)} | ({"after": after} if after else {})
    payload = api.get("/api/events", params=params)
    page = api.expect(payload, EventPage, "GET /api/events")
    for event in page.events:
        api.expect(event, EventRow, "GET /api/events")
    return payload, page


def _event_row(event: dict[str, object], slugs: _Slugs) -> list[str]:
    """ID, AT, KIND, HOST (slug, else id), and the rest as key=value details."""
    host = slugs.of(event)
    details = " ".join(f"{k}={v}" for k, v in event.items() if k not in _NOT_DETAILS)
    at = str(event["at"])
    return [
        str(event["id"]),
        at[:19] + "Z" if len(at) > 20 else at,
        str(event["kind"]),
        str(host),
        details,
    ]
