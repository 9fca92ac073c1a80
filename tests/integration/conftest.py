"""Integration fixtures: real Valkey stores per session, a clean database per test.

Every test on the real server runs twice: on one Valkey server (``single``) and on a
three-master Valkey Redis Cluster (``cluster``), through the ``store`` parameter.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import fakeredis
import pytest
import redis.asyncio

from directory.keys import Keys
from directory.store import StoreClient, connect, is_cluster
from tests.servers import start_valkey, start_valkey_cluster

CLUSTER_MASTERS = 3


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """URL of a real Valkey server shared by the whole session."""
    url, stop = start_valkey(tmp_path_factory.mktemp("valkey"))
    yield url
    stop()


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory):
    """URL of one node of a real three-master Valkey cluster shared by the session."""
    url, stop = start_valkey_cluster(tmp_path_factory.mktemp("valkey-cluster"), CLUSTER_MASTERS)
    yield url
    stop()


@dataclass(frozen=True)
class Store:
    """A real store under test: its URL and whether it is a cluster."""

    url: str
    cluster: bool

    async def connect(self, **options) -> StoreClient:
        return await connect(self.url, cluster=self.cluster, **options)


@pytest.fixture(params=["single", "cluster"])
def store(request) -> Store:
    """The real store, once a single server and once a cluster (started on first use)."""
    if request.param == "single":
        return Store(request.getfixturevalue("redis_server"), cluster=False)
    return Store(request.getfixturevalue("redis_cluster_server"), cluster=True)


async def _clean_client(store: Store) -> StoreClient:
    client = await store.connect()
    await client.flushall()  # every primary of a cluster
    return client


@pytest.fixture
async def redis_client(store):
    """A client on an empty database (tests run one at a time, so FLUSHALL is safe)."""
    client = await _clean_client(store)
    yield client
    await client.aclose()


@pytest.fixture
async def valkey_client(store):
    """A client on an empty database of the real store, whatever a module overrides."""
    client = await _clean_client(store)
    yield client
    await client.aclose()


@pytest.fixture(params=["valkey", "valkey-cluster", "fakeredis"])
async def contract_client(request):
    """One contract, three stores: Valkey, a Valkey cluster and fakeredis (Lua via lupa).

    Modules whose tests are a store-independent contract (ownership, host registry) run
    on all; the event log's scripts use Lua's cmsgpack, which fakeredis lacks, so it
    runs on the real stores only.
    """
    if request.param == "valkey":
        client = await _clean_client(Store(request.getfixturevalue("redis_server"), False))
    elif request.param == "valkey-cluster":
        url = request.getfixturevalue("redis_cluster_server")
        client = await _clean_client(Store(url, cluster=True))
    else:
        client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def keys():
    """A fresh key namespace, so a test's keys are recognisably its own."""
    return Keys(f"t{secrets.token_hex(4)}")


class RoundTrips:
    """Counts what a client sends to the server: one send is one round trip.

    In a cluster one round trip sends to each node involved at once (in parallel):
    :meth:`check` accepts between ``n`` and ``n`` times the masters there.
    """

    def __init__(self, monkeypatch):
        self.count = 0
        original = redis.asyncio.connection.AbstractConnection.send_packed_command

        async def counting(conn, command, check_health=True):
            self.count += 1
            return await original(conn, command, check_health)

        monkeypatch.setattr(
            redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
        )

    def check(self, client, before: int, n: int) -> None:
        """``n`` round trips were made since ``before`` (per node, in a cluster)."""
        sent = self.count - before
        if is_cluster(client):
            assert n <= sent <= n * CLUSTER_MASTERS, f"{sent} sends for {n} round trips"
        else:
            assert sent == n


@pytest.fixture
def round_trips(monkeypatch):
    """Counter of commands/pipelines written to the server from now on."""
    return RoundTrips(monkeypatch)
