"""The store connection, and the one place redis errors become directory errors.

Every adapter wraps its calls in :func:`translate_errors`, so callers only ever see the
:mod:`directory.errors` tree:

* ``ConnectionError`` (incl. authentication failures), ``TimeoutError``, ``BusyLoadingError``
  (the server is still loading its data after a restart), ``ReadOnlyError`` (we reached a
  replica during a failover) and plain ``OSError`` from the socket  →  ``StoreUnavailable``;
* in cluster mode also ``ClusterDownError``, ``TryAgainError`` (a slot moving or failing
  over), ``SlotNotCoveredError`` and a cluster none of whose nodes answers  →
  ``StoreUnavailable``;
* any other ``RedisError`` (a script error, a wrong type: a bug, not an outage) →
  ``StoreError``; so is a client-side cluster error (keys of several slots in one script).

:func:`connect` speaks to one server (``redis.asyncio.Redis``) or, with ``cluster=True``,
to a Redis Cluster (``RedisCluster``, discovering every node from the one in the URL);
:data:`StoreClient` is either. ``ca_file`` verifies a ``rediss://`` server against that CA.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from directory.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

    from redis.typing import EncodableT

__all__ = ["StoreClient", "connect", "is_cluster", "mget", "redact_url", "translate_errors"]

StoreClient: TypeAlias = redis.asyncio.Redis | RedisCluster

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
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    OSError,
)
# Connections a cluster client may open to one node beyond its permits: the takeover
# subscription holds one for good.
_CLUSTER_SPARE_CONNECTIONS = 2


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # "Redis Cluster cannot be connected": no node answered (the cause says why).
    return isinstance(exc, redis.exceptions.RedisClusterException) and isinstance(
        exc.__cause__, _UNAVAILABLE
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
        if _unavailable(exc):
            raise StoreUnavailable(f"{self.what}: the store is unavailable: {exc}") from exc
        if isinstance(exc, redis.exceptions.MovedError):
            raise StoreError(
                f"{self.what}: the store is a Redis Cluster node ({exc}); connect in cluster mode"
            ) from exc
        if isinstance(exc, redis.exceptions.RedisError | redis.exceptions.RedisClusterException):
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


def is_cluster(client: StoreClient) -> bool:
    """Whether ``client`` speaks Redis Cluster (keys of a script must share a slot)."""
    return isinstance(client, RedisCluster)


async def mget(client: StoreClient, keys: Sequence[str]) -> list[bytes | str | None]:
    """GET of many keys in one round trip (cluster mode: one MGET per slot, pipelined)."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


class _PermitPipeline(ClusterPipeline):
    """A cluster pipeline that runs under one of its client's permits."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        if not isinstance(client, _BoundedCluster):  # built only by _BoundedCluster.pipeline
            raise TypeError("a _PermitPipeline belongs to a _BoundedCluster")
        async with client.permit():
            return await super().execute(raise_on_error, allow_redirections)


class _BoundedCluster(RedisCluster):
    """A ``RedisCluster`` whose callers wait for a free connection instead of failing.

    redis-py's cluster nodes raise ``MaxConnectionsError`` the moment their pool is used
    up, where a single server's blocking pool makes a burst wait. Every command and
    pipeline here holds one of ``limit`` permits, and a command or pipeline uses at most
    one connection per node, so no node's pool (``limit`` plus a spare for the takeover
    subscription) runs dry; a caller that gets no permit within ``wait`` seconds fails as
    a store outage would.
    """

    def __init__(self, *, limit: int, wait: float, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(max_connections=limit + _CLUSTER_SPARE_CONNECTIONS, **kwargs)
        self._permits = asyncio.Semaphore(limit)
        self._wait = wait

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        """Hold one permit (a connection's worth) for the duration of the block."""
        if self._permits.locked():  # all taken: wait, but not for ever
            try:
                async with asyncio.timeout(self._wait):
                    await self._permits.acquire()
            except TimeoutError:
                raise redis.exceptions.ConnectionError(
                    f"no free store connection within {self._wait:g} s"
                ) from None
        else:
            await self._permits.acquire()  # free: returns at once
        try:
            yield
        finally:
            self._permits.release()

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:  # noqa: ANN401
        """Run one command under a permit."""
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self,
        transaction: Any | None = None,  # noqa: ANN401 - redis-py's own signature
        shard_hint: Any | None = None,  # noqa: ANN401
    ) -> ClusterPipeline:
        """A pipeline (MULTI/EXEC with ``transaction``) that runs under a permit."""
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is not supported")
        # redis-py's own pipeline() builds its ClusterPipeline the same way; the attribute
        # mypy calls abstract is set in ClusterPipeline.__init__.
        return _PermitPipeline(self, transaction)  # type: ignore[abstract]


def _tls_options(url: str, ca_file: str | None) -> dict[str, Any]:
    """redis-py's TLS options for ``url``: verify the server against ``ca_file``."""
    if ca_file is None:
        return {}
    if urlsplit(url).scheme != "rediss":
        raise StoreError(f"a CA file ({ca_file}) is only used with a rediss:// store URL")
    if not Path(ca_file).is_file():
        raise StoreError(f"the store's CA file {ca_file} does not exist or is not a file")
    return {"ssl_ca_certs": ca_file}


async def connect(
    url: str,
    *,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = SOCKET_TIMEOUT,
    retries: int = RETRIES,
    cluster: bool = False,
    ca_file: str | None = None,
) -> StoreClient:
    """A pooled client for ``url`` (up to ``max_connections``) that has answered one PING.

    ``timeout`` bounds each call, its ``retries`` included (each try gets its share): a
    stalled store fails calls within it rather than hanging whoever waits on them.
    ``cluster``: ``url`` names one node of a Redis Cluster; the client learns the others
    from it, and ``max_connections`` bounds calls in flight (so connections per node).
    ``ca_file``: the CA that signed a ``rediss://`` server's certificate (default: the
    system's trust store).

    Raises :class:`StoreUnavailable` naming the URL (password redacted) when the store
    cannot be reached (a TLS certificate that does not verify included), and
    :class:`StoreError` for a URL redis-py cannot parse or a missing CA file.
    """
    safe = redact_url(url)
    tls = _tls_options(url, ca_file)
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": timeout / (retries + 1),
        "socket_connect_timeout": timeout / (retries + 1),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=timeout / 8), retries),
        **tls,
    }
    client: StoreClient
    try:
        if cluster:
            client = _BoundedCluster.from_url(url, limit=max_connections, wait=timeout, **options)
        else:
            # A blocking pool: under a burst, callers wait for a free connection (up to the
            # socket timeout) instead of failing with "too many connections".
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout, **options
            )
            client = redis.asyncio.Redis.from_pool(pool)  # the client owns (and closes) it
    except (ValueError, redis.exceptions.RedisClusterException) as exc:
        raise StoreError(f"invalid store URL {safe}: {exc}") from exc
    try:
        with translate_errors(f"connect to {safe}"):
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client
