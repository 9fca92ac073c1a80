"""Background loops of one relay machine: heartbeat and ownership refresh, takeover watch.

Both run for the life of `relay serve` and survive store outages: a failed pass is
counted, logged and retried; after an outage the machine re-asserts ownership of the
tunnels it still holds (a store restarted empty included).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from directory.errors import DirectoryError
from directory.ownership import Reasserted
from relay.machine.events import tunnel_connected
from relay.wire.protocol import CloseCode

if TYPE_CHECKING:
    from directory.machines import MachineState
    from directory.models import TakeoverNotice
    from relay.machine.state import RelayState

__all__ = ["heartbeat_once", "refresh_loop", "takeover_loop"]


async def heartbeat_once(state: RelayState) -> None:
    """Write this machine's liveness record (address, state, tunnel count) with its TTL."""
    cfg = state.config
    machine_state: MachineState = "draining" if state.draining else "running"
    await state.upkeep.machines.heartbeat(
        cfg.machine_id, cfg.advertise or "", machine_state, len(state.tunnels), cfg.owner_ttl_ms
    )


async def refresh_loop(state: RelayState) -> None:
    """Each ping interval: heartbeat, then extend our owner keys in pipelined batches."""
    cfg = state.config
    while True:
        await asyncio.sleep(cfg.ping_interval)
        await refresh_once(state)


async def refresh_once(state: RelayState) -> None:
    """One pass of heartbeat + ownership refresh; never raises for store failures."""
    cfg = state.config
    owned = state.tunnels.owned()
    reasserted = Reasserted()
    try:
        await heartbeat_once(state)
        if owned:
            lost = (
                await state.upkeep.ownership.refresh(owned, cfg.machine_id, cfg.owner_ttl_ms)
                if state.store_ok
                else []
            )
            if lost or not state.store_ok:
                # Keys that vanished (expired during an outage, or the store restarted
                # empty) are ours again unless a newer epoch was handed out meanwhile.
                gone = set(lost)
                retry = [(h, e) for h, e in owned if h in gone] if state.store_ok else owned
                reasserted = await state.upkeep.ownership.reassert(
                    retry, cfg.machine_id, cfg.owner_ttl_ms
                )
                state.log.info(
                    "ownership.reasserted",
                    tunnels=len(retry),
                    reclaimed=len(reasserted.reclaimed),
                    lost=len(reasserted.lost),
                )
    except DirectoryError as exc:
        if state.store_ok:
            state.log.warning("store.unreachable", error=str(exc), tunnels=len(owned))
        state.store_ok = False
        state.metrics.store_errors.add(1, {"op": "refresh"})
        return
    if not state.store_ok:
        state.log.info("store.recovered", tunnels=len(owned))
    state.store_ok = True
    epochs = dict(owned)
    await _adopt_new_epochs(state, epochs, reasserted.reclaimed)
    for host_id in reasserted.lost:
        tunnel = state.tunnels.by_host.get(host_id)
        # Only the tunnel the pass was about: the agent may have reconnected here since.
        if tunnel is not None and tunnel.epoch == epochs[host_id]:
            tunnel.log.info("tunnel.ownership_lost")
            await tunnel.close(CloseCode.REPLACED, "replaced by a newer connection")


async def _adopt_new_epochs(
    state: RelayState, owned: dict[str, int], reclaimed: dict[str, int]
) -> None:
    """Give re-claimed tunnels their new epoch and announce them again (Connected).

    While the record was gone the reconciler may have reported the old epoch's end, so
    presence shows the host offline until a newer epoch connects. A tunnel that closed
    meanwhile reported its end under the old epoch: the new record is released at once.
    """
    for host_id, epoch in reclaimed.items():
        tunnel = state.tunnels.by_host.get(host_id)
        if tunnel is not None and tunnel.epoch == owned[host_id]:
            tunnel.epoch = epoch
            tunnel.log.info("tunnel.reclaimed", old_epoch=owned[host_id])
            tunnel_connected(state.events, state.config.machine_id, tunnel)
            continue
        try:
            await state.upkeep.ownership.release(host_id, state.config.machine_id, epoch)
        except DirectoryError as exc:
            state.metrics.store_errors.add(1, {"op": "release"})
            state.log.warning("ownership.release_failed", host_id=host_id, error=str(exc))


async def takeover_loop(state: RelayState) -> None:
    """React at once when any machine claims a host (pub/sub), resubscribing after errors."""
    backoff = 0.1
    while True:
        try:
            async for notice in state.ownership.takeovers():
                backoff = 0.1
                await _on_claim(state, notice)
        except DirectoryError as exc:
            state.log.warning("ownership.takeover_watch_failed", error=str(exc))
            state.metrics.store_errors.add(1, {"op": "subscribe"})
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


async def _on_claim(state: RelayState, notice: TakeoverNotice) -> None:
    if notice.machine_id == state.config.machine_id:
        # Our own claims need nothing here: a new tunnel replaces an older one of the same
        # host in the local table (by epoch), and its arrival there wakes waiting requests
        # (waking them on the notice would send them looking before the tunnel is there).
        return
    state.tunnels.claimed(notice.host_id)
    tunnel = state.tunnels.by_host.get(notice.host_id)
    if tunnel is None or tunnel.epoch >= notice.epoch:
        return
    if tunnel.draining:
        # Make before break: the agent moved on our drain frame. Route new requests to
        # the new owner, let this tunnel finish what it carries; the drain closes it.
        state.tunnels.retire(tunnel)
        tunnel.mark_moved()
        tunnel.log.info("tunnel.moved", to_machine=notice.machine_id)
        return
    tunnel.log.info("tunnel.taken_over", by_machine=notice.machine_id)
    await tunnel.close(CloseCode.REPLACED, "replaced by a newer connection")
