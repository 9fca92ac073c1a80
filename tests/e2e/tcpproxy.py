"""A TCP proxy for tests that can turn into a black hole: it stops forwarding bytes in
both directions but never closes, like a peer that vanished without a FIN."""

from __future__ import annotations

import asyncio
import contextlib

from tests.e2e.harness import free_port


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to a TCP port or, with ``unix_path``, a unix socket."""

    def __init__(self, target_port: int | None = None, *, unix_path: str | None = None) -> None:
        self.target_port = target_port
        self.unix_path = unix_path
        self.port = free_port()
        self.blackholed = False
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    def blackhole(self) -> None:
        self.blackholed = True

    def restore(self) -> None:
        """Forward again; connections that lost bytes meanwhile are cut (as a real path would)."""
        self.blackholed = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()  # the target is down: so is the path
            return
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if self.blackholed:
                    continue  # swallow: nothing arrives, nothing closes
                dst.write(data)
                await dst.drain()
        if not self.blackholed:
            dst.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
