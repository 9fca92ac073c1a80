"""Keep a host's tunnel up: connect, serve, reconnect by the close code's rules.

Close-code policy:

* 4001 (drain), or a Drain frame: connect a new tunnel at once, before the old one goes
  (make before break); no backoff.
* 4002 (replaced): another agent holds the host. Do not fight: back off, report, and come
  back as a *standby* that only connects while nobody else holds the host.
* 4003 (unauthorized): the token was refused; this tunnel stops (exit status 3). Other
  tunnels of the same process go on.
* anything else (network loss, silence, 4008, 1013): reconnect with exponential backoff
  and full jitter, capped at ``max_backoff``, reset after a stable connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from relay import __version__, hot_path
from relay.agent.output import TunnelView
from relay.agent.session import SILENCE, AgentSession, HandshakeClosed, handshake
from relay.agent.upstream import Upstream
from relay.errors import PeerError, ProtocolError, peer_errors
from relay.logs import get_logger
from relay.wire.protocol import CloseCode, Welcome

if TYPE_CHECKING:
    from collections.abc import Sequence

    from structlog.typing import FilteringBoundLogger

    from relay.agent.observe import RequestTap
    from relay.agent.output import StateSink
    from relay.config import AgentConfig

__all__ = ["EXIT_UNAUTHORIZED", "Agent", "run_agent", "run_many"]

EXIT_UNAUTHORIZED = 3
_BASE_DELAY = 0.25


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one connection attempt ended."""

    code: int | None
    reason: str
    lasted: float = 0.0
    drained: bool = False
    stopped: bool = False


class Agent:
    """One host's agent; several can share a process, an HTTP client and an upstream."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        http: aiohttp.ClientSession,
        upstream: Upstream,
        log: FilteringBoundLogger | None = None,
        tap: RequestTap | None = None,
        states: StateSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.http = http
        self.upstream = upstream
        self.log = log or get_logger("agent")
        self.tap = tap
        self.states = states
        self.view = TunnelView(cfg.name, cfg.to)
        self.standby = False
        self.connected = asyncio.Event()
        self.session: AgentSession | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> int:
        """Keep the tunnel up until ``stop`` is set; returns the exit status."""
        attempt = 0
        self.show_state("connecting", f"to {self.cfg.server}")
        try:
            while not stop.is_set():
                outcome = await self._connect_once(stop)
                if outcome.stopped:
                    break
                if outcome.code == CloseCode.UNAUTHORIZED:
                    self.log.error(
                        "agent.unauthorized",
                        message="the relay refused this host token; check --token "
                        "(the host may have been removed)",
                        reason=outcome.reason,
                    )
                    self.show_state("refused", "(the relay refused this host token; tunnel ended)")
                    return EXIT_UNAUTHORIZED
                if outcome.drained or outcome.code == CloseCode.DRAIN:
                    attempt = 0
                    self.show_state("draining", "→ moving to another machine")
                    continue
                if outcome.lasted >= self.cfg.stable_after:
                    attempt = 0
                if outcome.code == CloseCode.REPLACED:
                    self.standby = True
                    attempt = max(attempt, 2)
                    self.log.warning(
                        "agent.replaced",
                        message="another agent holds this host; standing by",
                        reason=outcome.reason,
                    )
                    self.show_state("standby", "(another agent holds this host)")
                delay = random.uniform(0, min(self.cfg.max_backoff, _BASE_DELAY * 2**attempt))  # noqa: S311 - jitter, not crypto
                attempt += 1
                self.log.info(
                    "agent.reconnecting",
                    delay_s=round(delay, 3),
                    code=outcome.code,
                    reason=outcome.reason,
                )
                self.show_state("reconnecting", f"in {delay:.1f} s ({outcome.reason})")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
            self.show_state("stopped")
            return 0
        finally:
            for task in list(self._retiring):
                task.cancel()

    def show_state(self, state: str, detail: str = "") -> None:
        """Set this tunnel's state and report it (to the terminal, when shown)."""
        if self.states is not None:
            self.view.state = state
            self.view.detail = detail
            self.states.tunnel_state(self.view)

    async def _connect_once(self, stop: asyncio.Event) -> Outcome:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        try:
            with peer_errors("connect to the relay"):
                ws = await self.http.ws_connect(
                    cfg.tunnel_url,
                    headers={"Authorization": f"Bearer {cfg.token}"},
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                    max_msg_size=cfg.max_frame,
                    autoping=True,
                    compress=0,
                )
        except PeerError as exc:
            refused = exc.__cause__
            if isinstance(refused, aiohttp.WSServerHandshakeError):
                unauthorized = refused.status in {401, 403}
                return Outcome(
                    CloseCode.UNAUTHORIZED if unauthorized else None,
                    f"handshake refused: HTTP {refused.status}",
                )
            return Outcome(None, str(exc))
        started = loop.time()
        try:
            welcome = await handshake(
                ws,
                agent_version=__version__,
                limits=cfg.limits,
                timeout=cfg.connect_timeout,
                standby=self.standby,
            )
        except HandshakeClosed as exc:
            await ws.close()
            return Outcome(exc.code, exc.reason)
        except (ProtocolError, TimeoutError, aiohttp.ClientError) as exc:
            await ws.close(code=CloseCode.PROTOCOL_ERROR)
            return Outcome(None, f"handshake failed: {exc}")
        self.standby = False
        session = self._online(ws, welcome)
        reader = asyncio.create_task(session.read_loop())
        keeper = asyncio.create_task(session.keepalive(cfg.ping_interval, cfg.silence_timeout))
        drain = asyncio.create_task(session.drain_requested.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({reader, keeper, drain, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (keeper, drain, stopper):
            task.cancel()
        lasted = loop.time() - started
        self.connected.clear()
        if drain.done() and not drain.cancelled() and not reader.done():
            # Make before break: the caller connects anew while this tunnel finishes the
            # streams it carries and the relay closes it (4001).
            retire = asyncio.create_task(self._retire(session, reader))
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)
            return Outcome(CloseCode.DRAIN, "drain requested", lasted, drained=True)
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if stop.is_set():
                await session.finish(1.0)
                await ws.close(code=CloseCode.NORMAL, message=b"agent stopping")
                return Outcome(CloseCode.NORMAL, "stopped", lasted, stopped=True)
            # Silence: the socket is presumed dead; do not wait long for a close handshake.
            session.fail_streams_silently()
            await ws.close(code=SILENCE, message=b"relay silent")
            return Outcome(SILENCE, "relay silent", lasted)
        session.fail_streams_silently()
        code = session.close_code or ws.close_code
        session.log.info("agent.disconnected", code=code, reason=session.close_reason)
        return Outcome(code, session.close_reason or "closed", lasted)

    def _online(self, ws: aiohttp.ClientWebSocketResponse, welcome: Welcome) -> AgentSession:
        """The relay welcomed us: a session for the tunnel, and the news told."""
        log = self.log.bind(host_id=welcome.host_id, slug=welcome.slug, epoch=welcome.epoch)
        tap = self.tap
        if tap is not None:
            tap.slug, tap.host_id = welcome.slug, welcome.host_id
        session = AgentSession(
            ws, welcome, self.upstream, local_limits=self.cfg.limits, log=log, tap=tap
        )
        self.session = session
        self.connected.set()
        log.info(
            "agent.connected",
            machine_id=welcome.machine_id,
            url=welcome.url,
            hot_path=hot_path.STATE,
        )
        view = self.view
        view.slug, view.name, view.url = welcome.slug, welcome.name, welcome.url
        view.machine = welcome.machine_id
        self.show_state("online")
        return session

    async def _retire(self, session: AgentSession, reader: asyncio.Task[None]) -> None:
        keeper = asyncio.create_task(
            session.keepalive(self.cfg.ping_interval, self.cfg.silence_timeout)
        )
        try:
            await asyncio.wait({reader, keeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keeper.cancel()
            session.fail_streams_silently()
            if not reader.done():
                reader.cancel()
            if not session.ws.closed:
                await session.ws.close(code=CloseCode.NORMAL, message=b"moved")
            session.log.info("agent.retired_old_tunnel", code=session.close_code)


def tunnel_client() -> aiohttp.ClientSession:
    """The HTTP client agents dial the relay with."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        # Meaningless on an upgrade, and the relay keeps each tunnel's request headers
        # for the tunnel's life, tens of thousands of times over.
        skip_auto_headers=("Accept", "Accept-Encoding"),
    )


async def run_many(
    configs: Sequence[AgentConfig],
    stop: asyncio.Event,
    *,
    taps: Sequence[RequestTap | None] = (),
    states: StateSink | None = None,
) -> list[int]:
    """Run one agent per config in this process until ``stop``; their exit statuses.

    They share one client to the relay and one upstream pool per local service. Each
    tunnel is on its own: one refused or failing never stops the others.
    ``taps[i]`` (if given) sees the requests of ``configs[i]``; ``states`` their states.
    """
    if not configs:
        return []
    log = get_logger("agent")
    upstreams: dict[str, Upstream] = {}
    agents: list[Agent] = []
    async with tunnel_client() as http:
        try:
            for i, cfg in enumerate(configs):
                upstream = upstreams.get(cfg.to)
                if upstream is None:
                    upstream = upstreams[cfg.to] = Upstream(
                        cfg.to,
                        connections=cfg.upstream_connections,
                        max_ws_message=cfg.max_frame - 1024,
                        log=log,
                    )
                agent_log = log.bind(tunnel=cfg.name) if cfg.name else log
                tap = taps[i] if i < len(taps) else None
                agents.append(
                    Agent(cfg, http=http, upstream=upstream, log=agent_log, tap=tap, states=states)
                )
            return list(await asyncio.gather(*(_guarded(agent, stop) for agent in agents)))
        finally:
            for upstream in upstreams.values():
                await upstream.close()


async def _guarded(agent: Agent, stop: asyncio.Event) -> int:
    """One tunnel's run; a bug that ends it is logged and ends only that tunnel."""
    try:
        return await agent.run(stop)
    except Exception:
        agent.log.exception("agent.tunnel_failed", to=agent.cfg.to)
        agent.show_state("stopped", "(failed; see the log)")
        return 1


async def run_agent(cfg: AgentConfig, stop: asyncio.Event) -> int:
    """Run one agent until ``stop``; the exit status of `relay agent`."""
    (status,) = await run_many([cfg], stop)
    return status
