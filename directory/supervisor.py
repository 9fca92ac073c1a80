"""Keeps the embedded Valkey running: restarts it with backoff when it dies.

The relay's only store on a one-machine setup must not stay dead because its process was
killed (OOM killer, an operator's stray ``kill``): every death is reaped (no zombie),
logged with the server's exit status and the tail of its log, counted, and followed by a
restart on the same data directory (the append-only file brings the data back) and the
same socket, so clients reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from directory.embedded import EmbeddedValkey
from directory.errors import EmbeddedStoreError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SupervisedValkey"]

_log = structlog.get_logger("directory.supervisor")


class SupervisedValkey:
    """An :class:`EmbeddedValkey` that is started again whenever it dies.

    Lifecycle: ``start()`` once (returns the URL), ``stop()`` once; ``deaths`` and
    ``restarts`` count what happened in between.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        check_interval: float = 0.5,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        self._data_dir = data_dir
        self._check_interval = check_interval
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._server: EmbeddedValkey | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None
        self.deaths = 0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The running server's process id."""
        return None if self._server is None else self._server.pid

    async def start(self) -> str:
        """Start the server and its watcher; returns the URL clients use."""
        if self._task is not None:
            raise EmbeddedStoreError("the supervised store was already started")
        self._server = EmbeddedValkey(self._data_dir)
        self._url = await self._server.start()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="store-watch")
        return self._url

    async def stop(self) -> None:
        """Stop watching, then stop the server (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval)
            server = self._server
            if server is None or server.alive:
                continue
            self.deaths += 1
            _log.error(
                "store.embedded_died",
                status=server.exit_status,
                deaths=self.deaths,
                log_tail=server.log_tail(),
            )
            server.release_dead()  # reaped above; frees the data dir's lock
            self._server = None
            await self._restart()

    async def _restart(self) -> None:
        delay = self._min_backoff
        while True:
            server = EmbeddedValkey(self._data_dir)
            try:
                url = await server.start()
            except EmbeddedStoreError as exc:
                _log.error("store.embedded_restart_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            self._server = server
            self.restarts += 1
            if url != self._url:
                # TCP fallback picked another port: clients holding the old URL cannot
                # follow. Said loudly; a short data dir path (unix socket) avoids it.
                _log.error("store.embedded_url_changed", old=self._url, new=url)
                self._url = url
            _log.warning("store.embedded_restarted", url=url, restarts=self.restarts)
            return
