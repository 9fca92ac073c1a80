"""The GC policy: freeze what survives, clean up once cycles may be left among it."""

from __future__ import annotations

import gc
import weakref

import pytest
import structlog

from relay.machine.gc_policy import GcPolicy
from relay.machine.tunnels import LocalTunnels
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


def policy(table, **kw):
    p = GcPolicy(table, structlog.get_logger(), **kw)
    p.start()
    return p


def test_each_tick_freezes_what_survived_and_frees_young_cycles(table):
    p = policy(table, step=10, audit_every=1000)
    frozen = gc.get_freeze_count()
    kept = [Cyclic() for _ in range(100)]
    young = weakref.ref(Cyclic())  # garbage already: a young collection frees it
    assert p.check() == "freeze"
    assert young() is None
    assert gc.get_freeze_count() >= frozen + 100
    assert all(gc.is_tracked(k) for k in kept)


def test_cleanup_frees_cycles_frozen_with_tunnels_that_closed(table):
    p = policy(table, step=10, audit_every=1000)
    tunnels = add(table, 40)
    garbage = Cyclic()
    dead = weakref.ref(garbage)
    assert p.check() == "freeze"
    del garbage  # garbage now, but frozen: no collection can see it
    gc.collect()
    assert dead() is not None
    for t in tunnels[:9]:
        table.remove(t)
    assert p.check() == "freeze"  # 9 closed < max(step, 31 // 4)
    table.remove(tunnels[9])
    assert p.check() == "cleanup"
    assert dead() is None
    assert p.check() == "freeze"


def test_cleanup_when_frozen_objects_grew_by_a_quarter(table):
    p = policy(table, step=10, audit_every=2)
    assert p.check() == "freeze"
    assert p.check() == "freeze"  # audited: nothing grew
    grown = [Cyclic() for _ in range(gc.get_freeze_count() // 3)]
    assert p.check() == "freeze"
    assert p.check() == "cleanup"  # audited: a third more frozen
    assert grown


def test_a_displaced_tunnel_counts_as_closed(table):
    p = policy(table, step=2)
    table.add(fake_tunnel(1))
    table.add(fake_tunnel(2))  # replaces the first in the table
    assert table.removed_total == 1
    table.add(fake_tunnel(3))
    assert p.check() == "cleanup"
