"""`relay agent` as a process: its tunnels, its output and, if asked for, its inspector."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Final, TextIO

from relay.agent.observe import RequestLines, RequestTap, Ring
from relay.agent.output import Console, JsonRequestLines
from relay.agent.runner import run_many
from relay.logs import configure_logging, get_logger
from relay.tracing import configure_tracing, shutdown_tracing

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

    from relay.agent.inspector import Inspector
    from relay.config import AgentConfig

__all__ = ["INSPECT_CAPACITY", "run_agents", "terminal"]

#: Requests the inspector keeps (each with up to 2 x 64 KiB of bodies).
INSPECT_CAPACITY: Final = 200


def terminal(log_format: str) -> TextIO | None:
    """The terminal to show the status block and request lines on, if any.

    None (JSON lines only) when logs are asked for as JSON or neither stdout nor stderr
    is a terminal.
    """
    if log_format == "json":
        return None
    if sys.stdout.isatty():
        return sys.stdout
    if sys.stderr.isatty():
        return sys.stderr
    return None


async def run_agents(configs: Sequence[AgentConfig], stop: asyncio.Event) -> int:
    """Run the tunnels of ``configs`` until all end or ``stop``; the exit status.

    The options shared by the tunnels (output, inspector, logs) are the first config's.
    The status is the worst of the tunnels' (3 when a token was refused).
    """
    first = configs[0]
    screen = terminal(first.log_format)
    level = first.log_level
    if screen is not None and level.lower() == "info":
        level = "warning"  # the status block says what info lines would
    configure_logging(first.log_format, level)
    configure_tracing("relay-agent")
    log = get_logger("agent")
    ring = Ring(INSPECT_CAPACITY) if first.inspect is not None else None
    inspector: Inspector | None = None
    if first.inspect is not None and ring is not None:
        from relay.agent.inspector import Inspector  # noqa: PLC0415 - aiohttp.web only when on

        inspector = Inspector(first.inspect, ring, log, allow_remote=first.inspect_allow_remote)
        await inspector.start()
    try:
        lines: RequestLines | None = None
        console: Console | None = None
        if screen is not None:
            console = Console(
                screen,
                requests=not first.quiet,
                color=True,
                tunnels=len(configs),
                inspector=inspector.url if inspector is not None else "",
            )
            lines = console if not first.quiet else None
        elif not first.quiet and log.is_enabled_for(logging.INFO):
            lines = JsonRequestLines(sys.stderr)
        taps = [
            RequestTap(cfg.name, cfg.to, lines=lines, ring=ring)
            if lines is not None or ring is not None
            else None
            for cfg in configs
        ]
        statuses = await run_many(configs, stop, taps=taps, states=console)
    finally:
        if inspector is not None:
            await inspector.close()
        await shutdown_tracing()  # spans still queued go out before the process ends
    return max(statuses, default=0)
