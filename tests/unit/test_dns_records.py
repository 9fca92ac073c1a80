"""Pure DNS rules: targets, names, who keeps records, what counts as drift, settings."""

from __future__ import annotations

import pytest

from directory.dns.records import (
    DnsRecord,
    Target,
    describe,
    desired_records,
    keeps_records,
    marker_for,
    normalize_name,
    parse_target,
)
from directory.dns.settings import DnsSettings
from directory.errors import InvalidInput

MARK = marker_for("relay")


def test_a_name_target_gives_one_cname_and_addresses_give_a_and_aaaa():
    assert parse_target("Relay.Example.NET.") == (Target("CNAME", "relay.example.net"),)
    assert parse_target("192.0.2.1, 2001:db8::1") == (
        Target("A", "192.0.2.1"),
        Target("AAAA", "2001:db8::1"),
    )


@pytest.mark.parametrize(
    "bad", ["", " , ", "relay.example.net,192.0.2.1", "192.0.2.1,192.0.2.2", "bad name!", "-x.com"]
)
def test_unusable_targets_are_refused(bad):
    with pytest.raises(InvalidInput):
        parse_target(bad)


def test_names_are_lowercased_without_the_trailing_dot_and_checked():
    assert normalize_name("AbC.Example.com.") == "abc.example.com"
    for bad in ["", ".", "a..b", "a" * 64 + ".com", "é.com", "-a.com"]:
        with pytest.raises(InvalidInput):
            normalize_name(bad)


def test_records_survive_short_disconnects_and_go_after_the_grace():
    common = {"now": 1000.0, "grace": 100.0}
    assert keeps_records(exists=True, online=True, offline_since=None, **common)
    assert keeps_records(exists=True, online=False, offline_since=950.0, **common)
    assert keeps_records(exists=True, online=False, offline_since=900.0, **common)
    assert not keeps_records(exists=True, online=False, offline_since=899.0, **common)
    assert not keeps_records(exists=False, online=True, offline_since=None, **common)


def test_desired_records_carry_the_marker_and_describe_reads_well():
    records = desired_records(
        "ab.example.com", parse_target("192.0.2.1,2001:db8::1"), ttl=60, marker=MARK
    )
    assert all(r.comment == MARK and r.ttl == 60 for r in records)
    assert describe(records) == ["ab.example.com A 192.0.2.1", "ab.example.com AAAA 2001:db8::1"]


def test_matches_ignores_ids_and_case_but_not_content_ttl_or_marker():
    want = DnsRecord(
        name="a.x.com", type="CNAME", content="relay.example.net", ttl=60, comment=MARK
    )
    assert DnsRecord(
        name="a.x.com",
        type="CNAME",
        content="RELAY.example.net",
        ttl=60,
        comment=MARK,
        id="7",
        modified_at=1.0,
    ).matches(want)
    assert not DnsRecord(
        name="a.x.com", type="CNAME", content="other.net", ttl=60, comment=MARK
    ).matches(want)
    assert not DnsRecord(
        name="a.x.com", type="CNAME", content="relay.example.net", ttl=300, comment=MARK
    ).matches(want)
    assert not DnsRecord(
        name="a.x.com", type="CNAME", content="relay.example.net", ttl=60, comment="other"
    ).matches(want)


def test_a_proxied_record_matches_whatever_ttl_cloudflare_reports():
    want = DnsRecord(
        name="a.x.com", type="A", content="192.0.2.1", ttl=300, proxied=True, comment=MARK
    )
    assert DnsRecord(
        name="a.x.com", type="A", content="192.0.2.1", ttl=1, proxied=True, comment=MARK
    ).matches(want)
    assert not DnsRecord(
        name="a.x.com", type="A", content="192.0.2.1", ttl=300, proxied=False, comment=MARK
    ).matches(want)


def test_ownership_is_the_exact_marker():
    assert DnsRecord(name="a", type="A", content="1.2.3.4", comment=MARK).is_ours(MARK)
    assert not DnsRecord(name="a", type="A", content="1.2.3.4", comment=MARK + "x").is_ours(MARK)
    assert not DnsRecord(name="a", type="A", content="1.2.3.4").is_ours(MARK)
    assert marker_for("a") != marker_for("b")  # deployments sharing a zone keep apart


def test_settings_place_hosts_and_test_hosts_in_their_zones():
    s = DnsSettings(
        mode="managed",
        base_domain="relay.example.com",
        zone="example.com",
        test_zone="test.example.net",
        targets=parse_target("relay.example.net"),
    )
    assert s.placement("abc", test=False) == ("example.com", "abc.relay.example.com")
    assert s.placement("test-abc", test=True) == ("test.example.net", "test-abc.test.example.net")
    assert s.zones() == ["example.com", "test.example.net"]
    assert "*.relay.example.com CNAME relay.example.net" in s.wildcard_record()


def test_settings_refuse_a_zone_outside_the_base_and_managed_without_target():
    with pytest.raises(InvalidInput):
        DnsSettings(base_domain="relay.example.com", zone="other.com")
    with pytest.raises(InvalidInput):
        DnsSettings(mode="managed", base_domain="example.com", zone="example.com")
