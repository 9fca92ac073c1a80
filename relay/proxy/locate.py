"""Where a request for a host whose tunnel this machine does not hold should go.

Shared by both paths that meet such requests: the fast front (bodiless requests in
fly-replay mode, answered with a replay, 404 or 503 on a kept-alive connection) and the
aiohttp path (everything else, which may also forward). The caller says how to reach an
owning machine (``to_owner``); the directory walk, the one-hop rule and the reconnect
grace live here once.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, TypeVar

from relay.tracing import child_span, lookup_span

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from directory.machines import MachineRecord
    from relay.machine.state import RelayState
    from relay.machine.tunnels import Tunnel

__all__ = ["Missing", "live_machine", "locate"]

T = TypeVar("T")


class Missing(enum.Enum):
    """Why no tunnel or owner was found."""

    UNKNOWN_HOST = "unknown_host"  # no host has this slug: 404
    OFFLINE = "host_offline"  # the host is registered but connected nowhere: 503


async def live_machine(state: RelayState, machine_id: str) -> MachineRecord | None:
    """The machine's record while it can take requests (None: gone or stopped)."""
    with lookup_span("machine"):
        machine = await state.routes.machine(machine_id)
    if machine is None or machine.state == "stopped":
        return None
    return machine


async def locate(
    state: RelayState,
    slug: str,
    *,
    hopped: bool,
    to_owner: Callable[[str], Awaitable[T | None]],
) -> Tunnel | T | Missing:
    """A tunnel here, what ``to_owner`` made of the owning machine, or why neither.

    ``to_owner(machine_id)`` replays or forwards to that machine; None means it could not
    (the machine is gone), and the walk goes on. Follows the owner key twice at most:
    before and after a short grace for a host in the middle of a reconnect. Raises
    :class:`~directory.errors.DirectoryError` when the store fails.
    """
    with lookup_span("resolve_slug"):
        host_id = await state.routes.host_id(slug)
    if host_id is None:
        return Missing.UNKNOWN_HOST
    found = await _via_owner(state, slug, host_id, hopped=hopped, to_owner=to_owner)
    if found is Missing.OFFLINE and state.routes.forget(slug):
        # The host id came from the routing cache: the host may have been removed since
        # (404), or its slug taken by a new host. Read the slug again before saying 503.
        with lookup_span("resolve_slug"):
            fresh = await state.routes.host_id(slug)
        if fresh is None:
            return Missing.UNKNOWN_HOST
        if fresh != host_id:
            return await _via_owner(state, slug, fresh, hopped=hopped, to_owner=to_owner)
    return found


async def _via_owner(
    state: RelayState,
    slug: str,
    host_id: str,
    *,
    hopped: bool,
    to_owner: Callable[[str], Awaitable[T | None]],
) -> Tunnel | T | Missing:
    """Follow the owner key (twice at most: before and after a short grace)."""
    grace = state.config.reconnect_grace
    for attempt in range(2):
        with lookup_span("owner"):
            owner = await state.ownership.owner(host_id)
        if owner is not None and owner.machine_id != state.config.machine_id:
            if hopped:
                # One hop at most. A tunnel that moved away during our drain still
                # serves; otherwise the directory changed under us: never hop again.
                retired = state.tunnels.retired.get(slug)
                if retired is not None and not retired.closed:
                    return retired
                state.metrics.proxy_errors.add(1, {"reason": "loop_guard"})
                break
            sent = await to_owner(owner.machine_id)
            if sent is not None:
                return sent
        if attempt or (owner is None and not state.tunnels.left_within(slug, grace)):
            break
        # Mid-reconnect (owner key live, owner machine gone, or it just left here): wait
        # a short grace for the tunnel to land here or for a machine to claim it.
        with child_span("relay.reconnect_grace"):
            tunnel = await state.tunnels.wait_for(slug, host_id, grace)
        if tunnel is not None:
            return tunnel
    tunnel = state.tunnels.by_slug.get(slug)
    return Missing.OFFLINE if tunnel is None else tunnel
