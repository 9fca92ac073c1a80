"""Keep a host's tunnel up: connect, serve, reconnect by the close code's rules.

Close-code policy:

* 4001 (drain), or a Drain frame: connect a new tunnel at once, before the old one goes
  (make before break); no backoff.
* 4002 (replaced): another agent holds the host. Do not fight: back off, report, and come
  back as a *standby* that only connects while nobody else holds the host.
* 4003 (unauthorized): the token was refused; stop with a non-zero exit.
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

from relay import __version__
from relay.agent.session import SILENCE, AgentSession, HandshakeClosed, handshake
from relay.agent.upstream import Upstream
from relay.errors import PeerError, ProtocolError, peer_errors
from relay.logs import get_logger
from relay.wire.protocol import CloseCode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from structlog.typing import FilteringBoundLogger

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
    ) -> None:
        self.cfg = cfg
        self.http = http
        self.upstream = upstream
        self.log = log or get_logger("agent")
        self.standby = False
        self.connected = asyncio.Event()
        self.session: AgentSession | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> int:
        """Keep the tunnel up until ``stop`` is set; returns the exit status."""
        attempt = 0
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
                    return EXIT_UNAUTHORIZED
                if outcome.drained or outcome.code == CloseCode.DRAIN:
                    attempt = 0
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
                delay = random.uniform(0, min(self.cfg.max_backoff, _BASE_DELAY * 2**attempt))  # noqa: S311 - jitter, not crypto
                attempt += 1
                self.log.info(
                    "agent.reconnecting",
                    delay_s=round(delay, 3),
                    code=outcome.code,
                    reason=outcome.reason,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
            return 0
        finally:
            for task in list(self._retiring):
                task.cancel()

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
        log = self.log.bind(host_id=welcome.host_id, slug=welcome.slug, epoch=welcome.epoch)
        session = AgentSession(ws, welcome, self.upstream, local_limits=cfg.limits, log=log)
        self.session = session
        self.connected.set()
        log.info("agent.connected", machine_id=welcome.machine_id)
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
        log.info("agent.disconnected", code=code, reason=session.close_reason)
        return Outcome(code, session.close_reason or "closed", lasted)

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


async def run_many(configs: Sequence[AgentConfig], stop: asyncio.Event) -> list[int]:
    """Run one agent per config in this process, sharing one client and upstream pool."""
    if not configs:
        return []
    first = configs[0]
    log = get_logger("agent")
    upstream = Upstream(
        first.to,
        connections=first.upstream_connections,
        max_ws_message=first.max_frame - 1024,
        log=log,
    )
    async with tunnel_client() as http:
        try:
            agents = [Agent(cfg, http=http, upstream=upstream, log=log) for cfg in configs]
            return list(await asyncio.gather(*(agent.run(stop) for agent in agents)))
        finally:
            await upstream.close()


async def run_agent(cfg: AgentConfig, stop: asyncio.Event) -> int:
    """Run one agent until ``stop``; the exit status of `relay agent`."""
    (status,) = await run_many([cfg], stop)
    return status
