"""Integration fixtures: one real Valkey server per session, a clean database per test."""

from __future__ import annotations

import secrets

import fakeredis
import pytest
import redis.asyncio

from directory.keys import Keys
from directory.store import connect
from tests.servers import start_valkey


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """URL of a real Valkey server shared by the whole session."""
    url, stop = start_valkey(tmp_path_factory.mktemp("valkey"))
    yield url
    stop()


@pytest.fixture
async def redis_client(redis_server):
    """A client on an empty database (tests run one at a time, so FLUSHALL is safe)."""
    client: redis.asyncio.Redis = await connect(redis_server)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def valkey_client(redis_server):
    """A client on an empty database of the real server, whatever a module overrides."""
    client: redis.asyncio.Redis = await connect(redis_server)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(params=["valkey", "fakeredis"])
async def contract_client(request, redis_server):
    """One contract, two stores: the real Valkey and fakeredis (its Lua through lupa).

    Modules whose tests are a store-independent contract (ownership, host registry) run
    on both; the event log's scripts use Lua's cmsgpack, which fakeredis lacks, so it
    runs on the real server only.
    """
    if request.param == "valkey":
        client = await connect(redis_server)
        await client.flushall()
    else:
        client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def keys():
    """A fresh key namespace, so a test's keys are recognisably its own."""
    return Keys(f"t{secrets.token_hex(4)}")


class RoundTrips:
    """Counts what a client sends to the server: one send is one round trip."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = redis.asyncio.connection.AbstractConnection.send_packed_command

        async def counting(conn, command, check_health=True):
            self.count += 1
            return await original(conn, command, check_health)

        monkeypatch.setattr(
            redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
        )


@pytest.fixture
def round_trips(monkeypatch):
    """Counter of commands/pipelines written to the server from now on."""
    return RoundTrips(monkeypatch)
