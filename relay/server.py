"""`relay serve`: start the store, the app and the directory loops; drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from typing import TYPE_CHECKING

from aiohttp import web

from directory.embedded import EmbeddedValkey
from directory.errors import DirectoryError
from directory.hosts import HostRegistry
from directory.keys import Keys
from directory.ownership import OwnershipStore
from directory.store import connect
from relay.app import build_app
from relay.errors import TunnelClosed
from relay.logs import configure_logging, get_logger
from relay.metrics import Metrics
from relay.protocol import CloseCode
from relay.state import RelayState
from relay.tunnel import LocalTunnels

if TYPE_CHECKING:
    from pathlib import Path

    from relay.config import ServeConfig

__all__ = ["load_admin_token", "serve"]


def load_admin_token(configured: str | None, data_dir: Path) -> tuple[str, bool]:
    """The admin token: configured, else stored in ``<data-dir>/admin-token`` (0600).

    Returns the token and whether it was generated just now.
    """
    if configured:
        return configured, False
    path = data_dir / "admin-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


async def serve(cfg: ServeConfig) -> int:
    """Run one relay machine until SIGTERM/SIGINT; returns the exit status."""
    configure_logging(cfg.log_format, cfg.log_level)
    log = get_logger("relay").bind(machine_id=cfg.machine_id)
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    admin_token, generated = load_admin_token(cfg.admin_token, cfg.data_path)
    embedded: EmbeddedValkey | None = None
    redis_url = cfg.redis_url
    if redis_url is None:
        embedded = EmbeddedValkey(cfg.data_path.resolve())
        redis_url = await embedded.start()
        log.info("store.embedded_started", url=redis_url)
    try:
        return await _run(cfg, redis_url, admin_token, generated=generated)
    finally:
        if embedded is not None:
            await embedded.stop()
            log.info("store.embedded_stopped")


async def _run(cfg: ServeConfig, redis_url: str, admin_token: str, *, generated: bool) -> int:
    log = get_logger("relay").bind(machine_id=cfg.machine_id)
    redis = await connect(redis_url)
    keys = Keys(cfg.key_prefix)
    tunnels = LocalTunnels()
    metrics = Metrics(tunnels_current=lambda: len(tunnels))
    state = RelayState(
        config=cfg,
        redis=redis,
        hosts=HostRegistry(redis, keys),
        ownership=OwnershipStore(redis, keys),
        tunnels=tunnels,
        metrics=metrics,
        log=log,
        admin_token=admin_token,
    )
    runner = web.AppRunner(
        build_app(state), handler_cancellation=True, access_log=None, auto_decompress=False
    )
    await runner.setup()
    host, port = cfg.host_port
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loops = [
        asyncio.create_task(_refresh_loop(state), name="ownership-refresh"),
        asyncio.create_task(_takeover_loop(state), name="takeover-watch"),
    ]
    _banner(state, admin_token, generated=generated)
    log.info("relay.started", listen=cfg.listen, base_domain=cfg.base_domain)
    try:
        await stop.wait()
        await _drain(state)
    finally:
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await redis.aclose()
        metrics.shutdown()
    log.info("relay.stopped")
    return 0


def _banner(state: RelayState, admin_token: str, *, generated: bool) -> None:
    cfg = state.config
    host, port = cfg.host_port
    where = f"http://{host}:{port}"
    if cfg.admin_token:
        token_line = "  admin token: (from RELAY_ADMIN_TOKEN)"  # noqa: S105 - a label, not a secret
    else:
        saved = cfg.data_path / "admin-token"
        token_line = f"  admin token{' (new)' if generated else ''}: {admin_token}  [{saved}]"
    lines = [
        f"relay {cfg.machine_id} listening on {where}",
        f"  hosts are served at {state.url_for('<slug>')}",
        token_line,
        f"  add a host:  relay hosts add myhost --server {where}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


async def _refresh_loop(state: RelayState) -> None:
    """Extend our owner keys each ping interval, in pipelined batches; drop lost hosts."""
    cfg = state.config
    while True:
        await asyncio.sleep(cfg.ping_interval)
        owned = state.tunnels.owned()
        if not owned:
            continue
        try:
            if state.store_ok:
                lost = await state.ownership.refresh(owned, cfg.machine_id, cfg.owner_ttl_ms)
            else:
                lost = await state.ownership.reassert(owned, cfg.machine_id, cfg.owner_ttl_ms)
                state.log.info("ownership.reasserted", tunnels=len(owned), lost=len(lost))
            state.store_ok = True
        except DirectoryError as exc:
            state.store_ok = False
            state.metrics.store_errors.add(1, {"op": "refresh"})
            state.log.warning("ownership.refresh_failed", error=str(exc), tunnels=len(owned))
            continue
        for host_id in lost:
            tunnel = state.tunnels.by_host.get(host_id)
            if tunnel is not None:
                tunnel.log.info("tunnel.ownership_lost")
                await tunnel.close(CloseCode.REPLACED, "replaced by a newer connection")


async def _takeover_loop(state: RelayState) -> None:
    """Close our stale tunnel at once when a newer epoch claims one of our hosts."""
    backoff = 0.1
    while True:
        try:
            async for notice in state.ownership.takeovers():
                backoff = 0.1
                tunnel = state.tunnels.by_host.get(notice.host_id)
                if tunnel is not None and tunnel.epoch < notice.epoch:
                    tunnel.log.info("tunnel.taken_over", by_machine=notice.machine_id)
                    await tunnel.close(CloseCode.REPLACED, "replaced by a newer connection")
        except DirectoryError as exc:
            state.log.warning("ownership.takeover_watch_failed", error=str(exc))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


async def _drain(state: RelayState) -> None:
    """Stop taking tunnels, move agents away (drain frame, then 4001), release, exit."""
    cfg = state.config
    state.draining = True
    deadline = time.time() + cfg.drain_timeout
    tunnels = state.tunnels.all()
    state.log.info("relay.draining", tunnels=len(tunnels))
    for tunnel in tunnels:
        try:
            await tunnel.drain(deadline)
        except TunnelClosed:
            continue  # it went away on its own, which is what a drain wants
    # Agents open their new tunnel elsewhere on the drain frame; give in-flight streams
    # the window to finish, then close what is left with 4001.
    busy = [t.idle.wait() for t in state.tunnels.all()]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(cfg.drain_timeout):
            await asyncio.gather(*busy)
    for tunnel in state.tunnels.all():
        await tunnel.close(CloseCode.DRAIN, "server draining")
    state.log.info("relay.drained")
