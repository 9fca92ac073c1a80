"""The ping wheel: one timer visits every tunnel once per interval.

The ticks are driven by hand here (what the timer would call), so the tests count
visits per tick and never depend on how fast the machine runs.
"""

from __future__ import annotations

from relay.machine.ping_wheel import PingWheel

SLOTS = 10


class FakeTunnel:
    def __init__(self, pings_left: int = 1000) -> None:
        self.visits: list[int] = []
        self.pings_left = pings_left
        self.tick = 0

    def ping_due(self, interval: float, misses: int) -> bool:
        self.visits.append(self.tick)
        self.pings_left -= 1
        return self.pings_left > 0


def tick(wheel: PingWheel, tunnels: list[FakeTunnel], n: int, at: list[int]) -> None:
    for _ in range(n):
        at[0] += 1
        for t in tunnels:
            t.tick = at[0]
        wheel.tick()


async def test_each_tunnel_is_visited_once_per_interval_starting_one_interval_after_add():
    wheel = PingWheel(1.0, 3, slots=SLOTS)
    now = [0]
    try:
        tunnels = []
        for _ in range(5):  # added at different points of the wheel
            tunnels.append(FakeTunnel())
            wheel.add(tunnels[-1])
            tick(wheel, tunnels, 3, now)
        tick(wheel, tunnels, 3 * SLOTS, now)
    finally:
        wheel.stop()
    for i, t in enumerate(tunnels):
        added = 3 * i
        assert t.visits[0] == added + SLOTS
        assert all(b - a == SLOTS for a, b in zip(t.visits, t.visits[1:], strict=False))


async def test_a_tunnel_that_needs_no_more_pings_and_a_discarded_one_are_dropped():
    wheel = PingWheel(1.0, 3, slots=SLOTS)
    now = [0]
    try:
        done, gone, kept = FakeTunnel(pings_left=1), FakeTunnel(), FakeTunnel()
        for t in (done, gone, kept):
            wheel.add(t)
        wheel.discard(gone)
        wheel.discard(gone)  # idempotent
        tick(wheel, [done, gone, kept], 3 * SLOTS, now)
    finally:
        wheel.stop()
    assert done.visits == [SLOTS]
    assert gone.visits == []
    assert kept.visits == [SLOTS, 2 * SLOTS, 3 * SLOTS]
    assert len(wheel) == 1


async def test_a_failing_visit_does_not_stop_the_wheel():
    class Broken(FakeTunnel):
        def ping_due(self, interval: float, misses: int) -> bool:
            raise RuntimeError("bug")

    wheel = PingWheel(1.0, 3, slots=SLOTS)
    wheel.add(Broken())
    try:
        for _ in range(SLOTS - 1):
            wheel.tick()
        try:
            wheel.tick()
        except RuntimeError:
            pass
        else:
            raise AssertionError("the visit's error must surface")
        assert wheel.scheduled  # the next tick is still scheduled
    finally:
        wheel.stop()
