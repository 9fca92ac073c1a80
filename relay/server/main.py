"""`relay serve`: start the store, the app and the directory loops; drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from directory.errors import DirectoryError
from directory.hosts import HostRegistry
from directory.keys import Keys
from directory.machines import MachineRegistry
from directory.ownership import OwnershipStore
from directory.store import connect
from directory.supervisor import SupervisedValkey
from relay import hot_path
from relay.api.hosts import metrics_response
from relay.config import parse_hostport
from relay.errors import StartupError, TunnelClosed
from relay.logs import configure_logging, get_logger, json_logs
from relay.machine.access_log import AccessLog
from relay.machine.dns_setup import build_dns_service
from relay.machine.events import EventServices, register_event_metrics
from relay.machine.gc_policy import GcPolicy
from relay.machine.loops import heartbeat_once, refresh_loop, takeover_loop
from relay.machine.metrics import Metrics
from relay.machine.ping_wheel import PingWheel
from relay.machine.state import RelayState, Upkeep
from relay.machine.tunnels import LocalTunnels, Tunnel
from relay.proxy.front import FrontServer
from relay.server.app import build_app
from relay.server.endpoint import tunnel_server
from relay.server.stopping import EXIT_STOPPED_AT_ONCE, StopSignals, drain_notice
from relay.sockets import listening_socket
from relay.tracing import configure_tracing, shutdown_tracing
from relay.wire.protocol import CloseCode

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from pathlib import Path

    from structlog.typing import FilteringBoundLogger

    from relay.config import ServeConfig

__all__ = ["load_admin_token", "serve"]

# The upkeep's own pool (heartbeat and refresh run one after the other; one spare).
_UPKEEP_CONNECTIONS = 2
# Seconds moved tunnels stay after a drain settled, for requests replayed to us meanwhile.
_REPLAY_LINGER = 0.5
# Seconds a stop at once (second Ctrl-C) gives tunnels to close and release ownership.
_STOP_AT_ONCE_S = 1.0


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
    token = "ra_" + secrets.token_urlsafe(32)  # prefixed: never starts with "-"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


async def serve(cfg: ServeConfig) -> int:
    """Run one relay machine until SIGTERM/SIGINT; returns the exit status."""
    configure_logging(cfg.log_format, cfg.log_level)
    configure_tracing("relay")
    log = get_logger("relay").bind(machine_id=cfg.machine_id)
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    admin_token, generated = load_admin_token(cfg.admin_token, cfg.data_path)
    embedded: SupervisedValkey | None = None
    redis_url = cfg.redis_url
    if redis_url is None:
        embedded = SupervisedValkey(cfg.data_path.resolve())
        redis_url = await embedded.start()
        log.info("store.embedded_started", url=redis_url)
    try:
        return await _run(cfg, redis_url, admin_token, generated=generated, embedded=embedded)
    finally:
        await shutdown_tracing()  # the spans of the drain included
        if embedded is not None:
            await embedded.stop()
            log.info("store.embedded_stopped")


async def _run(
    cfg: ServeConfig,
    redis_url: str,
    admin_token: str,
    *,
    generated: bool,
    embedded: SupervisedValkey | None,
) -> int:
    log = get_logger("relay").bind(machine_id=cfg.machine_id)
    state, events = await _build_state(cfg, redis_url, admin_token, log)
    front, runner, tunnel_runner = await _servers(state)
    host, port = cfg.host_port
    _watch_machine(state, front, embedded)
    metrics_runner: web.AppRunner | None = None
    try:
        await front.start(host, port, backlog=1024)
        if cfg.metrics_listen is not None:
            metrics_runner = await _metrics_listener(cfg.metrics_listen)
    except OSError as exc:
        await front.close()
        await runner.cleanup()
        await tunnel_runner.cleanup()
        await _close_clients(state)
        raise StartupError(f"cannot listen: {exc.strerror or exc}") from exc
    signals = StopSignals()
    signals.install(asyncio.get_running_loop())
    await heartbeat_once(state)
    events.start()
    if state.dns is not None:
        state.dns.start()
    loops = _start_loops(state, log)
    _banner(state, admin_token, generated=generated)
    log.info(
        "relay.started", listen=cfg.listen, base_domain=cfg.base_domain, hot_path=hot_path.STATE
    )
    status = 0
    try:
        await signals.drain.wait()
        events.draining()
        if not await _drain_unless_stopped(state, signals):
            status = EXIT_STOPPED_AT_ONCE
    finally:
        for task in loops:
            task.cancel()
        # Bounded: redis-py can swallow a cancellation that lands inside a command, and
        # a stuck loop must not keep a draining machine from exiting.
        _done, stuck = await asyncio.wait(loops, timeout=2.0)
        if stuck:
            log.warning("relay.loops_stuck_at_exit", loops=[t.get_name() for t in stuck])
        state.pings.stop()
        await front.close()
        await runner.cleanup()
        await tunnel_runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if state.access_log is not None:
            state.access_log.flush()
        await events.close()  # after the tunnels' last Disconnected, before the store goes
        await _close_clients(state)
    log.info("relay.stopped", status=status)
    return status


async def _drain_unless_stopped(state: RelayState, signals: StopSignals) -> bool:
    """Drain; a SIGINT meanwhile cuts it short. False when it was cut short."""
    drain = asyncio.create_task(_drain(state, signals.first or "signal"), name="drain")
    now = asyncio.create_task(signals.now.wait(), name="stop-at-once")
    try:
        await asyncio.wait({drain, now}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        now.cancel()
    if drain.done():
        drain.result()  # its failure, if any, is the stop's
        return True
    drain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await drain
    await _stop_at_once(state)
    return False


async def _stop_at_once(state: RelayState) -> None:
    """Close every tunnel now (4001: agents reconnect at once, elsewhere if they can).

    Requests still in flight fail; each tunnel's handler still releases its ownership
    and records the disconnect, so the directory does not wait for the owner TTL.
    """
    tunnels = state.tunnels.all() + list(state.tunnels.retired.values())
    state.log.warning("relay.stopping_at_once", tunnels=len(tunnels))
    if sys.stderr.isatty():
        sys.stderr.write(f"relay: stopping at once (exit status {EXIT_STOPPED_AT_ONCE})\n")
        sys.stderr.flush()
    # All at once, and bounded: a close waits for the agent's reply to the close frame.
    closing = [asyncio.create_task(t.close(CloseCode.DRAIN, "server stopping")) for t in tunnels]
    try:
        if closing:
            await asyncio.wait(closing, timeout=_STOP_AT_ONCE_S)
        if state.handlers:
            await asyncio.wait(list(state.handlers), timeout=_STOP_AT_ONCE_S)
    finally:
        for task in closing:
            task.cancel()
    try:
        await state.machines.remove(state.config.machine_id)
    except DirectoryError as exc:
        state.log.warning("relay.machine_remove_failed", error=str(exc))


def _watch_machine(
    state: RelayState, front: FrontServer, embedded: SupervisedValkey | None
) -> None:
    """Gauges and counters read at each scrape: descriptors, the store, its supervisor."""
    watch = state.metrics.watch
    watch("relay_open_descriptors", lambda: front.fds_open, "Open file descriptors")
    watch("relay_descriptor_limit", lambda: front.fd_limit, "The nofile soft limit")
    watch(
        "relay_connections_refused_total",
        lambda: front.refused,
        "Client connections turned away for want of file descriptors",
        counter=True,
    )
    watch("relay_store_up", lambda: int(state.store_ok), "1 while the store answers")
    if embedded is not None:
        watch(
            "relay_store_embedded_deaths_total",
            lambda: embedded.deaths,
            "Times the embedded Valkey died",
            counter=True,
        )
        watch(
            "relay_store_embedded_restarts_total",
            lambda: embedded.restarts,
            "Times the embedded Valkey was restarted after dying",
            counter=True,
        )


async def _metrics_listener(listen: str) -> web.AppRunner:
    """``/metrics`` alone on its own listener (``--metrics-listen``), no token there."""

    async def metrics(_request: web.Request) -> web.Response:
        return metrics_response()

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_hostport(listen)
    sock = listening_socket(host, port)
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    )
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


async def _servers(state: RelayState) -> tuple[FrontServer, web.AppRunner, web.ServerRunner]:
    """The front, and the two aiohttp servers it hands connections to.

    The application (API, dashboard, the slow proxy path) and agents' tunnels.
    """
    runner = web.AppRunner(
        build_app(state),
        handler_cancellation=True,
        access_log=None,
        auto_decompress=False,
        keepalive_timeout=state.config.keepalive_timeout,
    )
    tunnel_runner = web.ServerRunner(tunnel_server(state))
    await runner.setup()
    await tunnel_runner.setup()
    assert runner.server is not None  # noqa: S101 - set by setup()
    assert tunnel_runner.server is not None  # noqa: S101 - set by setup()
    return FrontServer(state, runner.server, tunnel_runner.server), runner, tunnel_runner


async def _build_state(
    cfg: ServeConfig, redis_url: str, admin_token: str, log: FilteringBoundLogger
) -> tuple[RelayState, EventServices]:
    """Connect to the store (main pool and the upkeep's own) and gather the machine's state."""
    # Requests wait on this pool: --store-timeout bounds each call (one retry within it).
    cluster, ca_file = cfg.redis_cluster, cfg.redis_ca
    redis = await connect(
        redis_url, timeout=cfg.store_timeout, retries=1, cluster=cluster, ca_file=ca_file
    )
    keys = Keys(cfg.key_prefix)
    # Upkeep's batched scripts get the default, longer deadline (well within an owner TTL).
    upkeep_redis = await connect(
        redis_url,
        max_connections=_UPKEEP_CONNECTIONS,
        retries=1,
        cluster=cluster,
        ca_file=ca_file,
    )
    upkeep = Upkeep(
        upkeep_redis, OwnershipStore(upkeep_redis, keys), MachineRegistry(upkeep_redis, keys)
    )
    tunnels = LocalTunnels()
    metrics = Metrics(
        tunnels_current=lambda: len(tunnels),
        host_requests=(
            (lambda: [(slug, t.requests) for slug, t in tunnels.by_slug.items()])
            if cfg.per_host_metrics
            else None
        ),
    )
    machines = MachineRegistry(redis, keys)
    events = EventServices(cfg, redis, keys)
    state = RelayState(
        config=cfg,
        redis=redis,
        hosts=HostRegistry(redis, keys),
        ownership=OwnershipStore(redis, keys),
        tunnels=tunnels,
        metrics=metrics,
        log=log,
        admin_token=admin_token,
        machines=machines,
        peer_client=aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        ),
        cluster_secret=cfg.cluster_secret or await machines.cluster_secret(),
        events=events.emitter,
        presence=events.presence,
        upkeep=upkeep,
        pings=PingWheel(cfg.ping_interval, cfg.ping_misses),
    )
    state.dns = dns = build_dns_service(
        cfg,
        redis=redis,
        ownership=state.ownership,
        presence=state.presence,
        meter=metrics.meter,
        log=log,
        emit=events.emitter.emit,
    )
    if cfg.access_log:
        state.access_log = AccessLog(cfg.machine_id, asyncio.get_running_loop())
    consumers = [events.consumer]
    if dns.consumer is not None:
        consumers.append(dns.consumer)
    register_event_metrics(metrics.meter, events.emitter, consumers)
    return state, events


async def _close_clients(state: RelayState) -> None:
    """Close what :func:`_build_state` opened (DNS service, peer client, store pools)."""
    if state.dns is not None:
        await state.dns.aclose()
    await state.peer_client.close()
    await state.redis.aclose()
    await state.upkeep.redis.aclose()
    state.metrics.shutdown()


def _banner(state: RelayState, admin_token: str, *, generated: bool) -> None:
    cfg = state.config
    where = _local_url(*cfg.host_port)
    if json_logs(cfg.log_format):
        # A log collector reads JSON lines only, and never gets the token itself.
        state.log.info(
            "relay.listening",
            url=where,
            hosts_url=state.url_for("<slug>"),
            dashboard_url=f"{where}/ui",
            admin_token_from="RELAY_ADMIN_TOKEN"
            if cfg.admin_token
            else str(cfg.data_path / "admin-token"),
        )
        return
    if cfg.admin_token:
        token_line = "  admin token: (as configured: --admin-token or RELAY_ADMIN_TOKEN)"  # noqa: S105 - a label, not a secret
    else:
        saved = cfg.data_path / "admin-token"
        token_line = f"  admin token{' (new)' if generated else ''}: {admin_token}  [{saved}]"
    lines = [
        f"relay {cfg.machine_id} listening on {where}"
        + ("" if where.endswith("//" + cfg.listen) else f" ({cfg.listen})"),
        f"  hosts are served at {state.url_for('<slug>')}",
        token_line,
        f"  dashboard:   {where}/ui",
        f"  add a host:  {_hosts_add_hint(cfg, where)}",
        f"  connect it:  {_prog()} agent --server {where} --token <its token> --to <service URL>",
        "  stop:        Ctrl-C drains (Ctrl-C again stops at once)",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _hosts_add_hint(cfg: ServeConfig, where: str) -> str:
    """A `hosts add` command that works as printed: this very program, this data dir."""
    hint = f"{_prog()} hosts add myhost --server {where}"
    if cfg.admin_token:
        hint = "RELAY_ADMIN_TOKEN=<admin token> " + hint  # the API wants the configured one
    elif cfg.data_dir != ".relay":
        hint += f" --data-dir {shlex.quote(cfg.data_dir)}"  # where the admin token is kept
    return hint


def _prog() -> str:
    """The running program's path when started by path (``.venv/bin/relay``), else ``relay``."""
    return shlex.quote(sys.argv[0]) if "/" in sys.argv[0] else "relay"


def _local_url(host: str, port: int) -> str:
    """A URL that reaches the listener from this machine (any-address listens via loopback)."""
    if host in {"0.0.0.0", "", "::"}:
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _start_loops(state: RelayState, log: FilteringBoundLogger) -> list[asyncio.Task[None]]:
    """The machine's background loops: ownership refresh, takeover watch, GC policy."""
    state.pings.start()
    gc_policy = GcPolicy(state.tunnels, log)
    gc_policy.start()  # last thing before serving: what exists now lives for the process
    return [
        asyncio.create_task(refresh_loop(state), name="ownership-refresh"),
        asyncio.create_task(takeover_loop(state), name="takeover-watch"),
        asyncio.create_task(gc_policy.run(), name="gc-policy"),
    ]


async def _linger(state: RelayState, tunnels: list[Tunnel], deadline: float) -> None:
    """Keep moved tunnels a moment for requests replayed here on a stale owner record.

    Another machine may have read our owner record just before the agent's new claim
    and answered ``fly-replay: instance=<us>``; that request may not hop again, so it
    must find the old tunnel still here. The moment covers the replay's trip.
    """
    moved = [t for t in tunnels if t.has_moved and not t.closed]
    linger = min(_REPLAY_LINGER, deadline - time.time())
    if not moved or linger <= 0:
        return
    await asyncio.sleep(linger)
    idle = [asyncio.create_task(t.wait_idle()) for t in moved]
    try:
        _done, busy = await asyncio.wait(idle, timeout=max(0.0, deadline - time.time()))
    finally:
        for task in idle:
            task.cancel()
    state.log.info("relay.drain_lingered", tunnels=len(moved), s=linger, busy=len(busy))


def _drain_cut_short(unsettled: list[Tunnel], state: RelayState, *, moving: bool) -> None:
    """The drain window ended first: say why (counted by cause, logged)."""
    # not_moved: agents found no other machine in time; busy: requests were still
    # running, and the close cuts them (all a lone machine, whose agents stay, waits for).
    causes = sorted({"busy" if t.has_moved or not moving else "not_moved" for t in unsettled})
    for cause in causes:
        state.metrics.drains_cut_short.add(1, {"cause": cause})
    state.log.warning("relay.drain_window_exceeded", unsettled=len(unsettled), causes=causes)


async def _peers(state: RelayState) -> int | None:
    """Other running machines an agent could move to; None when the store cannot say."""
    try:
        machines = await state.machines.list()
    except DirectoryError as exc:
        state.log.warning("relay.drain_peers_unknown", error=str(exc))
        return None
    me = state.config.machine_id
    return sum(1 for m in machines if m.machine_id != me and m.state == "running")


def _announce_drain(state: RelayState, tunnels: int, peers: int | None, signal_name: str) -> None:
    """A log line, and on a terminal a sentence: draining, for at most how long."""
    drain_timeout = state.config.drain_timeout
    state.log.info(
        "relay.draining",
        tunnels=tunnels,
        peers=peers,
        signal=signal_name,
        drain_timeout_s=drain_timeout,
    )
    if sys.stderr.isatty():
        sys.stderr.write(drain_notice(tunnels, peers, drain_timeout))
        sys.stderr.flush()


async def _wait_all(
    state: RelayState,
    tunnels: list[Tunnel],
    waits: list[Coroutine[Any, Any, None]],
    *,
    moving: bool,
) -> None:
    """Wait for every tunnel's condition within the drain window; cancel what is left."""
    tasks = [asyncio.create_task(w) for w in waits]
    try:
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=state.config.drain_timeout)
            if late:
                unsettled = [t for t, task in zip(tunnels, tasks, strict=True) if task in late]
                _drain_cut_short(unsettled, state, moving=moving)
    finally:
        for task in tasks:
            task.cancel()  # those still waiting (all of them when the drain is cut short)


async def _drain(state: RelayState, signal_name: str = "SIGTERM") -> None:
    """Move every agent away (drain frame, make before break), then close 4001 and go.

    Readiness fails from the first moment; tunnels keep serving until their agent has a
    new tunnel elsewhere and their in-flight streams are done, within the drain window.
    With no other running machine there is nowhere to move to: only the in-flight
    streams are waited for (same window), then the tunnels close.
    """
    cfg = state.config
    state.draining = True
    deadline = time.time() + cfg.drain_timeout
    tunnels = state.tunnels.all()
    try:
        await heartbeat_once(state)
    except DirectoryError as exc:
        state.log.warning("relay.drain_heartbeat_failed", error=str(exc))
    for tunnel in tunnels:
        try:
            await tunnel.drain(deadline)
        except TunnelClosed:
            continue  # it went away on its own, which is what a drain wants
    peers = await _peers(state) if tunnels else 0
    _announce_drain(state, len(tunnels), peers, signal_name)
    # No other running machine: agents have nowhere to move, so wait for streams only.
    waits = [t.wait_idle() if peers == 0 else t.settled() for t in tunnels]
    await _wait_all(state, tunnels, waits, moving=peers != 0)
    if peers != 0:
        await _linger(state, tunnels, deadline)
    for tunnel in tunnels:
        await tunnel.close(CloseCode.DRAIN, "server draining")
    # Each tunnel's handler releases its ownership as it ends; give them a moment.
    if state.handlers:
        await asyncio.wait(list(state.handlers), timeout=2.0)
    try:
        await state.machines.remove(cfg.machine_id)
    except DirectoryError as exc:
        state.log.warning("relay.machine_remove_failed", error=str(exc))
    state.log.info("relay.drained", tunnels=len(tunnels))
