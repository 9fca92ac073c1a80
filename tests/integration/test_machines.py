"""Machine liveness records in a real store (one server and a cluster)."""

from __future__ import annotations

from directory.machines import MachineRegistry
from tests.servers import wait_for


async def test_heartbeats_list_the_live_machines_newest_first(redis_client, keys):
    machines = MachineRegistry(redis_client, keys)
    await machines.heartbeat("m1", "http://10.0.0.1:8080", "running", 3, 60_000)
    await machines.heartbeat("m2", "http://10.0.0.2:8080", "draining", 0, 60_000)
    listed = await machines.list()
    assert [(m.machine_id, m.state, m.tunnels) for m in listed] == [
        ("m2", "draining", 0),
        ("m1", "running", 3),
    ]
    assert (await machines.get("m1")).address == "http://10.0.0.1:8080"
    await machines.remove("m2")
    assert [m.machine_id for m in await machines.list()] == ["m1"]
    assert await machines.get("m2") is None


async def test_a_machine_that_stops_heartbeating_disappears_by_itself(redis_client, keys):
    machines = MachineRegistry(redis_client, keys)
    await machines.heartbeat("gone", "http://10.0.0.3:8080", "running", 1, 50)
    await wait_for(
        lambda: _absent(machines, "gone"), timeout=5, what="the record expired by its TTL"
    )
    assert await machines.list() == []


async def test_the_cluster_secret_is_created_once(redis_client, keys):
    machines = MachineRegistry(redis_client, keys)
    first = await machines.cluster_secret()
    assert len(first) >= 32
    assert await MachineRegistry(redis_client, keys).cluster_secret() == first


async def _absent(machines: MachineRegistry, machine_id: str) -> bool:
    return await machines.get(machine_id) is None
