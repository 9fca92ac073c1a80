"""The host registry in a real store: slugs, tokens (stored hashed), create/get/list/delete."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from directory import hosts as hosts_module
from directory.errors import (
    CorruptRecord,
    HostNotFound,
    InvalidInput,
    InvalidSlug,
    SlugTaken,
)
from directory.hosts import HostRegistry
from directory.slugs import SLUG_LENGTH, validate_slug


@pytest.fixture
def redis_client(contract_client):
    """Every test here is the host registry contract: held by Valkey and by fakeredis alike."""
    return contract_client


@pytest.fixture
def registry(redis_client, keys):
    return HostRegistry(redis_client, keys)


async def _everything_stored(client) -> list[bytes]:
    """Every key name and every value (strings, zset members) in the database."""
    seen: list[bytes] = []
    async for key in client.scan_iter(count=1000):
        seen.append(key)
        kind = await client.type(key)
        if kind == b"string":
            seen.append(await client.get(key))
        elif kind == b"zset":
            seen.extend(await client.zrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected key type {kind!r} at {key!r}")
    return seen


async def test_create_returns_a_record_and_a_token_that_authenticates(registry):
    record, token = await registry.create("My laptop")
    assert record.id.startswith("h_")
    assert record.name == "My laptop"
    assert len(record.slug) == SLUG_LENGTH
    assert validate_slug(record.slug) == record.slug
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert len(token) >= 43
    assert await registry.authenticate(token) == record


async def test_a_host_is_found_by_id_and_by_slug_in_any_case(registry):
    record, _ = await registry.create("svc", "MySvc-01")
    assert record.slug == "mysvc-01"
    assert await registry.get(record.id) == record
    assert await registry.get("mysvc-01") == record
    assert await registry.get("MYSVC-01") == record
    assert await registry.resolve_slug("MySvc-01") == record.id


async def test_unknown_hosts_are_not_found(registry):
    with pytest.raises(HostNotFound) as caught:
        await registry.get("h_0000000000000000")
    assert caught.value.http_status == 404
    with pytest.raises(HostNotFound):
        await registry.get("nosuch01")
    with pytest.raises(HostNotFound):
        await registry.get("not a slug!")
    assert await registry.resolve_slug("nosuch01") is None
    assert await registry.resolve_slug("Not:a:slug") is None


async def test_wrong_empty_or_huge_tokens_do_not_authenticate(registry):
    _, token = await registry.create("svc")
    assert await registry.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert await registry.authenticate("") is None
    assert await registry.authenticate(token * 20) is None


async def test_list_returns_every_host_oldest_first_in_two_round_trips(
    registry, redis_client, round_trips
):
    created = [(await registry.create(f"host {i}"))[0] for i in range(30)]
    before = round_trips.count
    listed = await registry.list()
    round_trips.check(redis_client, before, 2)
    assert listed == created
    assert [h.created_at for h in listed] == sorted(h.created_at for h in listed)


async def test_list_of_an_empty_registry_is_empty(registry):
    assert await registry.list() == []


async def test_a_taken_slug_is_refused_with_409(registry):
    await registry.create("first", "shared1")
    with pytest.raises(SlugTaken) as caught:
        await registry.create("second", "Shared1")
    assert caught.value.http_status == 409
    assert caught.value.code == "slug_taken"
    assert [h.name for h in await registry.list()] == ["first"]


async def test_only_one_of_many_concurrent_claims_of_a_slug_wins(registry):
    results = await asyncio.gather(
        *(registry.create(f"racer {i}", "race1234") for i in range(10)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, SlugTaken) for r in results if isinstance(r, BaseException))
    assert await registry.resolve_slug("race1234") == winners[0][0].id
    assert len(await registry.list()) == 1


@pytest.mark.parametrize("slug", ["-abc", "a.b", "www", "test-mine", "xn--abc", "a" * 64, ""])
async def test_an_invalid_or_reserved_slug_is_refused_with_422(registry, slug):
    with pytest.raises(InvalidSlug) as caught:
        await registry.create("svc", slug)
    assert caught.value.http_status == 422
    assert caught.value.code == "invalid_slug"
    assert await registry.list() == []


async def test_test_hosts_may_use_reserved_test_prefixes(registry):
    record, _ = await registry.create("ci host", "test-mine", allow_reserved=True)
    assert record.slug == "test-mine"


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there", "new\nline"])
async def test_a_bad_name_is_refused_with_422(registry, name):
    with pytest.raises(InvalidInput) as caught:
        await registry.create(name)
    assert caught.value.http_status == 422
    assert caught.value.code == "invalid_input"


async def test_a_generated_slug_that_collides_is_replaced(registry, monkeypatch):
    await registry.create("holder", "aaaaaaaa")
    picks = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(hosts_module, "generate_slug", lambda: next(picks, "cccccccc"))
    record, _ = await registry.create("newcomer")
    assert record.slug == "bbbbbbbb"


async def test_the_plaintext_token_is_stored_nowhere(registry, redis_client):
    record, token = await registry.create("secretive")
    stored = await _everything_stored(redis_client)
    assert stored, "the registry wrote nothing?"
    assert not [item for item in stored if token.encode() in item]
    assert any(record.token_hash.encode() in item for item in stored)


async def test_delete_removes_everything_and_frees_the_slug(registry, redis_client, keys):
    record, token = await registry.create("doomed", "doomed01")
    other, _ = await registry.create("survivor")

    assert await registry.delete(record.id) == record

    assert await registry.authenticate(token) is None
    assert await registry.resolve_slug("doomed01") is None
    assert await registry.list() == [other]
    with pytest.raises(HostNotFound):
        await registry.get(record.id)
    with pytest.raises(HostNotFound):
        await registry.delete(record.id)
    leftovers = [
        k async for k in redis_client.scan_iter(match=keys.pattern()) if record.id.encode() in k
    ]
    assert leftovers == []
    again, _ = await registry.create("reborn", "doomed01")
    assert await registry.get("doomed01") == again


async def test_delete_leaves_a_slug_claim_that_points_at_another_host(registry, redis_client, keys):
    record, _ = await registry.create("old", "moved001")
    await redis_client.set(keys.slug("moved001"), b"h_someoneelse")
    await registry.delete(record.id)
    assert await registry.resolve_slug("moved001") == "h_someoneelse"


async def test_a_corrupt_host_record_raises_a_directory_error(registry, redis_client, keys):
    record, token = await registry.create("svc")
    await redis_client.set(keys.host(record.id), b'{"kind":"host"}')
    with pytest.raises(CorruptRecord):
        await registry.get(record.id)
    with pytest.raises(CorruptRecord):
        await registry.list()
    with pytest.raises(CorruptRecord):
        await registry.authenticate(token)
