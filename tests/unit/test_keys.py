"""The key layout: every key of one host in one hash slot, each shared group in one slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from directory.dns.state import DnsKeys
from directory.keys import Keys


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_every_key_of_one_host_shares_its_slot_and_hosts_spread():
    keys = Keys("relay")
    dns = DnsKeys(keys)
    for host_id in ("h_0123456789abcdef", "h_fedcba9876543210"):
        names = [
            keys.host(host_id),
            keys.epoch(host_id),
            keys.owner(host_id),
            keys.reclaim(host_id),
            dns.host(host_id),
            dns.lock(host_id),
        ]
        assert len({slot(n) for n in names}) == 1, names
    assert len({slot(Keys("relay").owner(f"h_{i:016x}")) for i in range(200)}) > 150


def test_keys_written_together_share_a_slot():
    keys = Keys("relay")
    dns = DnsKeys(keys)
    groups = [
        # one script: slug claim, token, index
        [keys.slug("abc"), keys.slug("zzz"), keys.token("ab" * 32), keys.hosts_index()],
        [keys.events(), keys.dead_letters()],  # one MULTI: park and acknowledge
        [keys.presence(), keys.presence_position()],  # one compare-and-set
        [keys.machine("m1"), keys.machine("m2"), keys.machines_index()],  # one MGET
        [dns.rate(), dns.rate_pause(), dns.hosts(), dns.dirty(), dns.lease()],  # one script
    ]
    for group in groups:
        assert len({slot(k) for k in group}) == 1, group
    # Different groups may land anywhere: they are never written by one command.
    assert len({slot(g[0]) for g in groups}) > 1


def test_single_server_names_stay_under_the_prefix():
    keys = Keys("tenant-a")
    assert keys.owner("h_1") == "tenant-a:{h:h_1}:owner"
    assert keys.slug("abc") == "tenant-a:{registry}:slug:abc"
    assert keys.events() == "tenant-a:{events}"
    assert all(
        k.startswith("tenant-a:")
        for k in (keys.lease("x"), keys.cluster_secret(), keys.owner_channel(), keys.machine("m"))
    )


@pytest.mark.parametrize("prefix", ["", "a b", "a{b}", "x}", "p" * 65])
def test_a_prefix_that_would_break_names_or_slots_is_refused(prefix):
    with pytest.raises(ValueError, match="key prefix"):
        Keys(prefix)
