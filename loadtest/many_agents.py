"""Many host agents in one process: one tunnel per token, sharing a client and upstream pool.

    python -m loadtest.many_agents --server URL --to URL --tokens-file FILE [--log-level L]

The tokens file holds one host token a line. Runs until SIGTERM/SIGINT, then closes every
tunnel cleanly. Tuning options are those of `relay agent` (defaults: its defaults).
``--ramp N`` starts N agents a second (in groups of N, each group one `run_many`)
instead of all at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from loadtest.common import run
from relay.agent.runner import run_many
from relay.config import AgentConfig
from relay.logs import configure_logging

_TUNING = ("ping_interval", "silence_timeout", "max_backoff", "stable_after")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="relay (or edge) URL")
    parser.add_argument("--to", required=True, help="local service, e.g. http://127.0.0.1:3000")
    parser.add_argument("--tokens-file", type=Path, required=True, help="one host token a line")
    for name in _TUNING:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    parser.add_argument("--upstream-connections", type=int, default=None)
    parser.add_argument("--ramp", type=int, default=0, help="agents started a second (0: all)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="json", choices=["auto", "json", "console"])
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> list[AgentConfig]:
    tokens = [line.strip() for line in args.tokens_file.read_text().splitlines() if line.strip()]
    tuning = {name: getattr(args, name) for name in _TUNING if getattr(args, name) is not None}
    if args.upstream_connections is not None:
        tuning["upstream_connections"] = args.upstream_connections
    return [
        AgentConfig(
            server=args.server,
            token=token,
            to=args.to,
            log_format=args.log_format,
            log_level=args.log_level,
            **tuning,
        ).resolved()
        for token in tokens
    ]


async def main_async(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    statuses = await run_ramped(configs(args), stop, args.ramp)
    return max(statuses, default=0)


async def run_ramped(configs: list[AgentConfig], stop: asyncio.Event, per_second: int) -> list:
    """`run_many` for all configs at once, or ``per_second`` more each second."""
    if per_second <= 0:
        return await run_many(configs, stop)

    async def group(index: int, chunk: list[AgentConfig]) -> list[int]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(index):
                await stop.wait()
        return [0] * len(chunk) if stop.is_set() else await run_many(chunk, stop)

    chunks = [configs[i : i + per_second] for i in range(0, len(configs), per_second)]
    results = await asyncio.gather(*(group(i, chunk) for i, chunk in enumerate(chunks)))
    return [status for statuses in results for status in statuses]


def main() -> None:
    raise SystemExit(run(main_async(parse_args())))


if __name__ == "__main__":
    main()
