"""Fixtures for end-to-end tests: real Valkey stores per session, processes per test.

The store is one Valkey server; a test (or module) parametrized with
``pytest.mark.parametrize("store", ["single", "cluster"], indirect=True)`` runs once more
on a three-master Valkey cluster (started once per session, on first use).
"""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.harness import Cluster
from tests.e2e.upstream import Upstream
from tests.servers import start_valkey, start_valkey_cluster

STORES = ["single", "cluster"]


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory):
    url, stop = start_valkey(tmp_path_factory.mktemp("valkey-e2e"))
    yield url
    stop()


@pytest.fixture(scope="session")
def valkey_cluster_url(tmp_path_factory):
    url, stop = start_valkey_cluster(tmp_path_factory.mktemp("valkey-cluster-e2e"))
    yield url
    stop()


@pytest.fixture
def store(request) -> tuple[str, bool]:
    """The relays' store: ``(url, is_cluster)``; a single server unless parametrized."""
    if getattr(request, "param", "single") == "cluster":
        return request.getfixturevalue("valkey_cluster_url"), True
    return request.getfixturevalue("valkey_url"), False


@pytest.fixture
async def cluster(tmp_path, store):
    url, redis_cluster = store
    c = Cluster(tmp_path, url, prefix=f"e2e{secrets.token_hex(4)}", redis_cluster=redis_cluster)
    yield c
    c.stop()


@pytest.fixture
async def upstream():
    u = await Upstream().start()
    yield u
    await u.stop()
