"""The store adapter: connecting, and redis errors translated into the directory's own."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from directory.embedded import EmbeddedValkey
from directory.errors import StoreError, StoreUnavailable
from directory.keys import Keys
from directory.ownership import OwnershipStore
from directory.store import connect, redact_url, translate_errors


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
