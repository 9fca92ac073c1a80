"""structlog set-up: one event name per line, JSON in production, console locally."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging", "get_logger", "json_logs"]


def json_logs(fmt: str = "auto") -> bool:
    """Whether logs are JSON lines (``auto``: when stderr is not a terminal)."""
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once per process; ``fmt`` is ``json``, ``console`` or ``auto``."""
    use_json = json_logs(fmt)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(renderer, numeric)


def _route_stdlib_logging(renderer: structlog.typing.Processor, level: int) -> None:
    """Libraries' own log records (aiohttp, asyncio, redis) as lines like ours.

    Without this, aiohttp's error for a malformed request or asyncio's "exception in
    callback" print multi-line tracebacks that break the one-JSON-object-per-line rule.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level, logging.INFO))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to a subsystem name."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(subsystem=name)
    return logger
