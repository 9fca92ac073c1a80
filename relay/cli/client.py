"""The admin API client of the `relay` command, and what its failures mean.

Every admin command (`relay hosts`, `machines`, `events`, `dns`, `directory`) talks to a
running relay's API: ``--server`` (default ``http://127.0.0.1:8080``), the admin token from
``RELAY_ADMIN_TOKEN`` or ``<data-dir>/admin-token``. Failures are typed by what the
operator should do about them, each with its own exit status::

    AdminError
    ├── ApiRefused      1  the relay answered, and said no (4xx/5xx other than auth)
    ├── TokenRefused    3  401/403: the admin token is wrong (says where it came from)
    └── Unreachable     4  no answer, a timeout, or an answer no relay gives
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from relay.errors import ConfigError

if TYPE_CHECKING:
    import argparse
    from types import TracebackType

__all__ = [
    "AdminClient",
    "AdminError",
    "ApiRefused",
    "ExitCode",
    "TokenRefused",
    "Unreachable",
    "add_admin_options",
    "admin_token",
]

DEFAULT_SERVER = "http://127.0.0.1:8080"

_T = TypeVar("_T")


class ExitCode(enum.IntEnum):
    """Exit statuses of the `relay` command (also in ``relay --help``)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    TOKEN_REFUSED = 3
    UNREACHABLE = 4


class AdminError(Exception):
    """An admin command failed; the message says why, ``exit_code`` how."""

    exit_code: ClassVar[ExitCode] = ExitCode.REFUSED


class ApiRefused(AdminError):
    """The relay answered with an error of its own (4xx/5xx other than 401/403)."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TokenRefused(AdminError):
    """The relay refused the admin token."""

    exit_code = ExitCode.TOKEN_REFUSED


class Unreachable(AdminError):
    """No relay answered at ``--server``."""

    exit_code = ExitCode.UNREACHABLE


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    """``--server``, ``--data-dir`` and ``--json``, shared by every admin command."""
    parser.add_argument(
        "--server",
        default=os.environ.get("RELAY_SERVER", DEFAULT_SERVER),
        metavar="URL",
        help=f"the relay's URL (default {DEFAULT_SERVER}) [env RELAY_SERVER]",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RELAY_DATA_DIR", ".relay"),
        metavar="DIR",
        help="where the admin token is kept, unless RELAY_ADMIN_TOKEN is set (default"
        " .relay) [env RELAY_DATA_DIR]",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON (the default when stdout is not a terminal)",
    )


@dataclass(frozen=True)
class Token:
    """The admin token and where it came from (for a refusal's message)."""

    value: str
    source: str


def admin_token(data_dir: str) -> Token:
    """``RELAY_ADMIN_TOKEN``, else ``<data-dir>/admin-token``."""
    token = os.environ.get("RELAY_ADMIN_TOKEN")
    if token:
        return Token(token, "RELAY_ADMIN_TOKEN")
    path = Path(data_dir) / "admin-token"
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"no admin token: set RELAY_ADMIN_TOKEN or run where {path} exists ({exc.strerror})"
        ) from exc
    if not value:
        raise ConfigError(f"no admin token: {path} is empty")
    return Token(value, str(path))


class _RelayError(msgspec.Struct):
    code: str
    message: str


class _ErrorBody(msgspec.Struct):
    """The shape of every error the relay answers: ``{"error": {"code", "message"}}``."""

    error: _RelayError


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class AdminClient:
    """One admin session against a relay: ``with AdminClient(args) as api: api.get(...)``."""

    def __init__(self, args: argparse.Namespace, *, timeout: float = 10.0) -> None:
        self.base = args.server.rstrip("/")
        parts = urlsplit(self.base)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"--server must be an http(s) URL, got {args.server!r}")
        self.token = admin_token(args.data_dir)
        self._http = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.token.value}"},
            timeout=timeout,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: object = None,
        timeout: float | None = None,
    ) -> Any:  # noqa: ANN401 - JSON; callers check its shape with expect()
        """One API call; its JSON answer (None for 204), or an :class:`AdminError`."""
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                json=body,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.TimeoutException as exc:
            raise Unreachable(f"{self.base} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach {self.base}: {exc}") from exc
        return self._answer(response)

    def get(self, path: str, *, params: dict[str, str] | None = None) -> Any:  # noqa: ANN401 - JSON
        """``GET path`` (see :meth:`call`)."""
        return self.call("GET", path, params=params)

    def _answer(self, response: httpx.Response) -> Any:  # noqa: ANN401 - JSON
        status = response.status_code
        kind = response.headers.get("content-type", "no content type").split(";")[0].strip()
        if status == 204 and response.is_success:
            return None
        if response.is_success:
            if kind != "application/json":
                raise self._not_a_relay(status, kind)
            try:
                return response.json()
            except ValueError as exc:
                raise self._not_a_relay(status, f"{kind} that does not parse") from exc
        try:
            error = _decode_error(response.content).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise self._not_a_relay(status, kind) from None
        if status in {401, 403}:
            raise TokenRefused(
                f"admin token refused by {self.base} (HTTP {status}: {error.message}); "
                f"the token came from {self.token.source}"
            )
        raise ApiRefused(
            f"{error.message} (HTTP {status}, {error.code})", status=status, code=error.code
        )

    def _not_a_relay(self, status: int, what: str) -> Unreachable:
        return Unreachable(f"{self.base} does not look like a relay (HTTP {status}, {what})")

    def expect(self, payload: object, shape: type[_T], what: str) -> _T:
        """``payload`` checked against the shape a relay answers; else Unreachable."""
        try:
            return msgspec.convert(payload, shape)
        except msgspec.ValidationError as exc:
            raise Unreachable(
                f"{self.base} does not look like a relay (unexpected answer to {what}: {exc})"
            ) from exc
