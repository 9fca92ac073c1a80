"""The store connection, and the one place redis errors become directory errors.

Every adapter wraps its calls in :func:`translate_errors`, so callers only ever see the
:mod:`directory.errors` tree:

* ``ConnectionError`` (incl. authentication failures), ``TimeoutError``, ``BusyLoadingError``
  (the server is still loading its data after a restart), ``ReadOnlyError`` (we reached a
  replica during a failover) and plain ``OSError`` from the socket  →  ``StoreUnavailable``;
* any other ``RedisError`` (a script error, a wrong type: a bug, not an outage) →
  ``StoreError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from directory.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["connect", "redact_url", "translate_errors"]

# Long enough for a loaded server to answer a 500-key script, short enough that a dead
# store is noticed well within one owner TTL.
SOCKET_TIMEOUT = 5.0
# Idle pooled connections are PINGed before use after this many seconds, so a connection
# cut by a proxy or a store restart fails there, not in the middle of a refresh.
HEALTH_CHECK_INTERVAL = 30
MAX_CONNECTIONS = 64
# redis-py retries 10 times by default; a few quick retries ride out a reconnect without
# stretching an outage into minutes of blocked callers.
RETRIES = 3

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


class translate_errors:  # noqa: N801 - reads as the function-like context manager it is
    """Context manager translating redis errors to directory errors (``from exc``).

    Usable as ``with translate_errors():`` around awaited calls, or ``async with``.
    ``what`` names the operation in the message (``"claim host h_1"``).
    """

    __slots__ = ("what",)

    def __init__(self, what: str = "store operation") -> None:
        self.what = what

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, _UNAVAILABLE):
            raise StoreUnavailable(f"{self.what}: the store is unavailable: {exc}") from exc
        if isinstance(exc, redis.exceptions.RedisError):
            raise StoreError(f"{self.what}: the store refused the command: {exc}") from exc

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def redact_url(url: str) -> str:
    """``url`` with any password (in the authority or a ``password=`` query) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user_info, _, host = netloc.rpartition("@")
        user = user_info.split(":", 1)[0]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if "password" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    # Every store URL has an authority part ("unix:///path" has an empty one), which
    # urlunsplit would drop, so the URL is put back together by hand.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


async def connect(
    url: str,
    *,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = SOCKET_TIMEOUT,
    retries: int = RETRIES,
) -> redis.asyncio.Redis:
    """A pooled client for ``url`` (up to ``max_connections``) that has answered one PING.

    ``timeout`` bounds each call, its ``retries`` included (each try gets its share): a
    stalled store fails calls within it rather than hanging whoever waits on them.

    Raises :class:`StoreUnavailable` naming the URL (password redacted) when the store
    cannot be reached, and :class:`StoreError` for a URL redis-py cannot parse.
    """
    safe = redact_url(url)
    try:
        # A blocking pool: under a burst, callers wait for a free connection (up to the
        # socket timeout) instead of failing with "too many connections".
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            decode_responses=False,
            socket_timeout=timeout / (retries + 1),
            socket_connect_timeout=timeout / (retries + 1),
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=timeout / 8), retries),
        )
    except ValueError as exc:
        raise StoreError(f"invalid store URL {safe}: {exc}") from exc
    client = redis.asyncio.Redis.from_pool(pool)  # the client owns (and closes) the pool
    try:
        with translate_errors(f"connect to {safe}"):
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client
