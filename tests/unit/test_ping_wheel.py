"""The ping wheel: one timer visits every tunnel once per interval."""

from __future__ import annotations

import asyncio

from relay.ping_wheel import PingWheel


class FakeTunnel:
    def __init__(self, pings_left: int = 1000) -> None:
        self.due: list[float] = []
        self.pings_left = pings_left

    def ping_due(self, interval: float, misses: int) -> bool:
        self.due.append(asyncio.get_running_loop().time())
        self.pings_left -= 1
        return self.pings_left > 0


async def test_each_tunnel_is_visited_once_per_interval():
    wheel = PingWheel(0.1, 3, slots=10)
    wheel.start()
    try:
        tunnels = [FakeTunnel() for _ in range(5)]
        for t in tunnels:
            wheel.add(t)
            await asyncio.sleep(0.013)  # spread over the wheel's buckets
        await asyncio.sleep(0.5)
    finally:
        wheel.stop()
    for t in tunnels:
        assert 3 <= len(t.due) <= 6, t.due
        gaps = [b - a for a, b in zip(t.due, t.due[1:], strict=False)]
        assert all(0.07 <= g <= 0.2 for g in gaps), gaps


async def test_a_tunnel_that_needs_no_more_pings_and_a_discarded_one_are_dropped():
    wheel = PingWheel(0.05, 3, slots=5)
    wheel.start()
    try:
        done, gone, kept = FakeTunnel(pings_left=1), FakeTunnel(), FakeTunnel()
        for t in (done, gone, kept):
            wheel.add(t)
        wheel.discard(gone)
        wheel.discard(gone)  # idempotent
        await asyncio.sleep(0.2)
    finally:
        wheel.stop()
    assert len(done.due) == 1
    assert gone.due == []
    assert len(kept.due) >= 2
    assert len(wheel) == 1
