"""TLS for store tests: certificates made with the ``openssl`` CLI, and a TLS front.

The wheel's Valkey is built without TLS (``--tls-port`` fails with "Failed finding TLS
support"), so :class:`TlsFront` terminates TLS in the test process, with Python's own
``ssl``, and passes the bytes on to the plain server: what the relay's client does over
``rediss://`` (handshake, certificate verification against ``--redis-ca``) is real; only
the server end of the tunnel is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate it signed (for 127.0.0.1), and an unrelated CA."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_certs(path: Path) -> Certs:
    """Generate the certificates under ``path`` (fails the test without ``openssl``)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run scripts/ensure-test-deps.sh (make test does)")
    path.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=relay test {name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            cwd=path,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr", cwd=path,
    )  # fmt: skip
    (path / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
        cwd=path,
    )  # fmt: skip
    return Certs(path / "ca.pem", path / "server.pem", path / "server.key", path / "other-ca.pem")


class TlsFront:
    """A TLS listener on 127.0.0.1 that forwards each connection to a plain store."""

    def __init__(self, certs: Certs, target: str | tuple[str, int]) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certs.cert, certs.key)
        self._target = target  # a unix socket path, or (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    async def start(self) -> TlsFront:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self._target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self._target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
        dst.close()
