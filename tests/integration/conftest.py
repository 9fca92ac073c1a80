"""Integration fixtures: one real Valkey server per session, a clean database per test."""

from __future__ import annotations

import secrets

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
