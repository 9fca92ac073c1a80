"""The machine's tunnel table: newest epoch wins, whatever order tunnels arrive in."""

from __future__ import annotations

from types import SimpleNamespace

from relay.machine.tunnels import LocalTunnels


def fake_tunnel(epoch: int, host_id: str = "h_1", slug: str = "web"):
    # The table reads only the host's id and slug and the epoch.
    return SimpleNamespace(host=SimpleNamespace(id=host_id, slug=slug), epoch=epoch)


def test_a_newer_tunnel_replaces_an_older_one():
    table = LocalTunnels()
    old, new = fake_tunnel(3), fake_tunnel(4)
    assert table.add(old) is None
    assert table.add(new) is old
    assert table.by_host["h_1"] is new and table.by_slug["web"] is new
    assert table.owned() == [("h_1", 4)]


def test_an_older_tunnel_arriving_late_is_refused_not_installed():
    table = LocalTunnels()
    old, new = fake_tunnel(3), fake_tunnel(4)
    assert table.add(new) is None
    assert table.add(old) is old  # the caller closes it as replaced
    assert table.by_host["h_1"] is new and table.by_slug["web"] is new
    assert table.remove(old) is False
    assert table.by_host["h_1"] is new


def test_remove_forgets_only_the_tunnel_in_place():
    table = LocalTunnels()
    t = fake_tunnel(1)
    table.add(t)
    assert table.remove(t) is True
    assert len(table) == 0 and table.by_slug_get("web") is None
