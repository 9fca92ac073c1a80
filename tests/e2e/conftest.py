"""Fixtures for end-to-end tests: one real Valkey per session, processes per test."""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.harness import Cluster
from tests.e2e.upstream import Upstream
from tests.servers import start_valkey


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory):
    url, stop = start_valkey(tmp_path_factory.mktemp("valkey-e2e"))
    yield url
    stop()


@pytest.fixture
async def cluster(tmp_path, valkey_url):
    c = Cluster(tmp_path, valkey_url, prefix=f"e2e{secrets.token_hex(4)}")
    yield c
    c.stop()


@pytest.fixture
async def upstream():
    u = await Upstream().start()
    yield u
    await u.stop()
