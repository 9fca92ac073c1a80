"""The routing cache: fresh answers reused briefly, misses and expiry read through."""

from __future__ import annotations

from relay.machine.route_cache import MACHINE_TTL, SLUG_TTL, RouteCache, TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Directory:
    """Answers like the host and machine registries, counting the store reads."""

    def __init__(self) -> None:
        self.slugs: dict[str, str] = {}
        self.records: dict[str, object] = {}
        self.reads = 0

    async def resolve_slug(self, slug: str) -> str | None:
        self.reads += 1
        return self.slugs.get(slug)

    async def get(self, machine_id: str) -> object | None:
        self.reads += 1
        return self.records.get(machine_id)


def test_ttl_cache_expires_and_stays_bounded():
    cache: TtlCache[str, int] = TtlCache(ttl=1.0, max_entries=3)
    cache.put("a", 1, now=0.0)
    assert cache.get("a", now=0.9) == 1
    assert cache.get("a", now=1.0) is None
    for i, key in enumerate("bcde"):
        cache.put(key, i, now=2.0)
    assert len(cache) == 3
    assert cache.get("b", now=2.0) is None  # the oldest went
    assert cache.get("e", now=2.0) == 3


async def test_found_slugs_are_reused_until_they_expire():
    directory, clock = Directory(), Clock()
    routes = RouteCache(directory, directory, clock)  # type: ignore[arg-type]
    directory.slugs["abc"] = "h_1"
    assert await routes.host_id("abc") == "h_1"
    assert await routes.host_id("abc") == "h_1"
    assert directory.reads == 1
    directory.slugs["abc"] = "h_2"  # removed and taken again
    clock.now += SLUG_TTL
    assert await routes.host_id("abc") == "h_2"
    assert directory.reads == 2


async def test_unknown_slugs_and_gone_machines_are_never_remembered():
    directory, clock = Directory(), Clock()
    routes = RouteCache(directory, directory, clock)  # type: ignore[arg-type]
    assert await routes.host_id("new") is None
    directory.slugs["new"] = "h_9"  # created a moment later: found at once
    assert await routes.host_id("new") == "h_9"
    assert await routes.machine("m1") is None
    directory.records["m1"] = record = object()
    assert await routes.machine("m1") is record
    assert await routes.machine("m1") is record
    assert directory.reads == 4
    clock.now += MACHINE_TTL
    del directory.records["m1"]
    assert await routes.machine("m1") is None


async def test_forget_says_whether_a_host_id_was_remembered():
    directory, clock = Directory(), Clock()
    routes = RouteCache(directory, directory, clock)  # type: ignore[arg-type]
    directory.slugs["abc"] = "h_1"
    await routes.host_id("abc")
    assert routes.forget("abc") is True
    assert routes.forget("abc") is False
    assert await routes.host_id("abc") == "h_1"
    assert directory.reads == 2
