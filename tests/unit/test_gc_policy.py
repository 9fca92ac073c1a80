"""The GC policy: freeze settled tunnels, clean up once enough of them closed."""

from __future__ import annotations

import gc
import weakref

import pytest
import structlog

from relay.gc_policy import GcPolicy
from relay.tunnel import LocalTunnels
from tests.unit.test_local_tunnels import fake_tunnel


class Cyclic:
    """Stands in for a tunnel's objects: a reference cycle only the collector frees."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def table():
    yield LocalTunnels()
    gc.unfreeze()  # leave the test process's collector as it was


def add(table, n, start=0):
    tunnels = [fake_tunnel(1, host_id=f"h_{i}", slug=f"s{i}") for i in range(start, start + n)]
    for t in tunnels:
        table.add(t)
    return tunnels


def test_freezes_each_time_step_tunnels_were_added(table):
    policy = GcPolicy(table, structlog.get_logger(), step=10)
    policy.start()
    assert gc.get_freeze_count() > 0
    add(table, 9)
    assert policy.check() is None
    add(table, 1, start=9)
    frozen = gc.get_freeze_count()
    assert policy.check() == "freeze"
    assert gc.get_freeze_count() >= frozen
    assert policy.check() is None  # nothing new since


def test_cleanup_frees_garbage_frozen_with_closed_tunnels(table):
    policy = GcPolicy(table, structlog.get_logger(), step=10)
    policy.start()
    tunnels = add(table, 40)
    garbage = Cyclic()
    dead = weakref.ref(garbage)
    assert policy.check() == "freeze"
    del garbage  # garbage now, but frozen: no collection can see it
    gc.collect()
    assert dead() is not None
    for t in tunnels[:9]:
        table.remove(t)
    assert policy.check() is None  # 9 closed < max(step, 31 // 4)
    table.remove(tunnels[9])
    assert policy.check() == "cleanup"
    assert dead() is None
    assert gc.get_freeze_count() > 0  # what lives is frozen again
    assert policy.check() is None


def test_a_displaced_tunnel_counts_as_closed(table):
    policy = GcPolicy(table, structlog.get_logger(), step=2)
    policy.start()
    table.add(fake_tunnel(1))
    table.add(fake_tunnel(2))  # replaces the first in the table
    assert table.removed_total == 1
    table.add(fake_tunnel(3))
    assert policy.check() == "cleanup"
