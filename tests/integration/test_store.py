"""The store adapter: connecting, and redis errors translated into the directory's own."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote, urlsplit

import pytest
import redis.exceptions

from directory.embedded import EmbeddedValkey
from directory.errors import StoreError, StoreUnavailable
from directory.keys import Keys
from directory.ownership import OwnershipStore
from directory.store import connect, redact_url, translate_errors
from tests.e2e.tcpproxy import BlackholeProxy
from tests.tls import TlsFront, make_certs


async def test_an_unreachable_store_is_unavailable_and_the_password_is_not_shown():
    with pytest.raises(StoreUnavailable) as caught:
        await connect("redis://:hunter2@127.0.0.1:1/0")
    assert "redis://:***@127.0.0.1:1/0" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert caught.value.http_status == 503
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)


async def test_an_invalid_url_is_a_store_error():
    with pytest.raises(StoreError, match="invalid store URL"):
        await connect("memcached://localhost")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user:pw@h:1/2", "redis://user:***@h:1/2"),
        ("unix:///run/v.sock?db=1&password=pw", "unix:///run/v.sock?db=1&password=***"),
    ],
)
def test_urls_are_redacted_for_messages(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (redis.exceptions.ConnectionError("gone"), StoreUnavailable),
        (redis.exceptions.TimeoutError("slow"), StoreUnavailable),
        (redis.exceptions.BusyLoadingError("loading"), StoreUnavailable),
        (ConnectionResetError("reset"), StoreUnavailable),
        (redis.exceptions.ResponseError("WRONGTYPE"), StoreError),
    ],
)
async def test_redis_errors_are_translated_once_with_their_cause(raised, expected):
    with pytest.raises(expected) as caught:
        with translate_errors("doing a thing"):
            raise raised
    assert caught.value.__cause__ is raised
    assert "doing a thing" in str(caught.value)
    with pytest.raises(expected):
        async with translate_errors():
            raise raised


async def test_other_errors_pass_through_untouched():
    with pytest.raises(KeyError), translate_errors():
        raise KeyError("not a store problem")


async def test_a_store_that_goes_away_makes_operations_unavailable(tmp_path):
    # A single embedded server, stopped under the client (a cluster's outage is the
    # cluster errors' translation below).
    server = EmbeddedValkey(tmp_path)
    client = await connect(await server.start())
    try:
        ownership = OwnershipStore(client, Keys("t"))
        await ownership.claim("h_1", "m1", 10_000)
        await server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            await ownership.refresh([("h_1", 1)], "m1", 10_000)
        # Translated at the adapter, naming what failed, with redis' error as the cause.
        assert "the store is unavailable" in str(caught.value)
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError | OSError)
        assert caught.value.http_status == 503
    finally:
        await client.aclose()
        await server.stop()


async def test_a_burst_larger_than_the_pool_waits_instead_of_failing(redis_client, keys):
    ownership = OwnershipStore(redis_client, keys)
    owners = await asyncio.gather(*(ownership.owner(f"h_{i}") for i in range(300)))
    assert owners == [None] * 300


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), StoreUnavailable),
        (redis.exceptions.TryAgainError("TRYAGAIN"), StoreUnavailable),
        (redis.exceptions.SlotNotCoveredError("slot 7"), StoreUnavailable),
        (redis.exceptions.MaxConnectionsError("too many"), StoreUnavailable),
        (redis.exceptions.RedisClusterException("all keys must map to one slot"), StoreError),
        (redis.exceptions.MovedError("3999 127.0.0.1:6381"), StoreError),
    ],
)
def test_cluster_errors_are_translated(raised, expected):
    with pytest.raises(expected) as caught, translate_errors("doing a thing"):
        raise raised
    assert caught.value.__cause__ is raised


def test_a_cluster_that_cannot_be_reached_is_unavailable():
    cause = redis.exceptions.ConnectionError("refused")
    try:
        raise redis.exceptions.RedisClusterException("Redis Cluster cannot be connected") from cause
    except redis.exceptions.RedisClusterException as exc:
        raised = exc
    with pytest.raises(StoreUnavailable), translate_errors():
        raise raised


async def test_cluster_mode_against_a_single_server_is_a_clear_error(redis_server):
    # The test server listens on a unix socket; a cluster client needs TCP.
    front = await BlackholeProxy(unix_path=unquote(urlsplit(redis_server).path)).start()
    try:
        with pytest.raises(StoreError, match="[Cc]luster mode is not enabled"):
            await connect(f"redis://127.0.0.1:{front.port}", cluster=True)
    finally:
        await front.stop()


async def test_an_unreachable_cluster_is_unavailable():
    with pytest.raises(StoreUnavailable, match=r"redis://:\*\*\*@127.0.0.1:1"):
        await connect("redis://:hunter2@127.0.0.1:1", cluster=True)


async def test_a_single_server_client_on_a_cluster_node_says_to_use_cluster_mode(
    redis_cluster_server,
):
    client = await connect(redis_cluster_server)
    try:
        # With three masters, some of twenty keys live on another node than this one.
        with pytest.raises(StoreError, match="connect in cluster mode"):
            await _read_all(client, [f"k{i}" for i in range(20)])
    finally:
        await client.aclose()


async def test_a_cluster_burst_beyond_the_permits_waits_then_fails_as_an_outage(
    redis_cluster_server,
):
    client = await connect(redis_cluster_server, cluster=True, max_connections=2, timeout=0.3)
    try:
        # Two permits: a burst of 50 waits its turn and succeeds ...
        assert await asyncio.gather(*(client.get(f"k{i}") for i in range(50))) == [None] * 50
        # ... but a caller that gets no permit in time fails like an outage.
        async with client.permit(), client.permit():
            with pytest.raises(StoreUnavailable, match="no free store connection within 0.3 s"):
                await _read_all(client, ["k"])
    finally:
        await client.aclose()


async def _read_all(client, keys: list[str]) -> None:
    for key in keys:
        with translate_errors(f"read {key}"):
            await client.get(key)


# --- TLS (rediss://) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_front(certs, redis_server):
    target = unquote(urlsplit(redis_server).path) if redis_server.startswith("unix") else None
    assert target is not None, redis_server
    front = await TlsFront(certs, target).start()
    yield front
    await front.stop()


async def test_a_rediss_store_verified_against_its_ca_works(tls_front, certs, keys):
    client = await connect(tls_front.url, ca_file=str(certs.ca))
    try:
        ownership = OwnershipStore(client, keys)
        epoch = await ownership.claim("h_tls", "m1", 10_000)
        assert (await ownership.owner("h_tls")).epoch == epoch
    finally:
        await client.aclose()


async def test_a_rediss_store_signed_by_another_ca_is_refused_naming_the_store(tls_front, certs):
    url = tls_front.url.replace("rediss://", "rediss://:hunter2@")
    with pytest.raises(StoreUnavailable) as caught:
        await connect(url, ca_file=str(certs.other_ca), timeout=2)
    message = str(caught.value)
    assert f"rediss://:***@127.0.0.1:{tls_front.port}/0" in message
    assert "certificate verify failed" in message
    assert "hunter2" not in message


async def test_a_missing_ca_file_or_a_plain_url_with_a_ca_is_a_clear_error(tmp_path, certs):
    with pytest.raises(StoreError, match="does not exist"):
        await connect("rediss://127.0.0.1:1", ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(StoreError, match="only used with a rediss://"):
        await connect("redis://127.0.0.1:1", ca_file=str(certs.ca))
