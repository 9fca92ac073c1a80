"""The plan is pure: desired vs actual, tested with Hypothesis.

Properties: applying a plan yields the desired records (minus conflicts), leaves every
record we do not own untouched, deletes only records that carry our marker, is
idempotent, and honours the delete switches (not allowed, grace, cap).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from directory.dns.plan import apply_plan, plan
from directory.dns.records import DnsRecord

MARK = "relay-directory:t"
NAMES = [f"{label}.example.com" for label in ("a", "b", "c", "d", "e")]
CONTENTS = {
    "A": ["192.0.2.1", "192.0.2.2"],
    "AAAA": ["2001:db8::1"],
    "CNAME": ["relay.example.net", "other.example.net"],
    "TXT": ["hello"],
}

types = st.sampled_from(["A", "AAAA", "CNAME"])


@st.composite
def records(draw, *, marker, all_types=False):
    type_ = draw(st.sampled_from(list(CONTENTS)) if all_types else types)
    return DnsRecord(
        name=draw(st.sampled_from(NAMES)),
        type=type_,
        content=draw(st.sampled_from(CONTENTS[type_])),
        ttl=draw(st.sampled_from([60, 300])),
        comment=marker,
        id=draw(st.uuids().map(str)),
        modified_at=draw(st.floats(0, 1000)),
    )


def desired_sets():
    """What hosts want: at most one record per (name, type), and CNAMEs alone at a name."""

    def valid(rs):
        by_key = {}
        for r in rs:
            by_key.setdefault(
                r.key,
                DnsRecord(name=r.name, type=r.type, content=r.content, ttl=r.ttl, comment=MARK),
            )
        names_with_cname = {k[0] for k in by_key if k[1] == "CNAME"}
        return [r for k, r in by_key.items() if k[1] == "CNAME" or k[0] not in names_with_cname]

    return st.lists(records(marker=MARK), max_size=8).map(valid)


ours_actual = st.lists(records(marker=MARK), max_size=8)
foreign_actual = st.lists(
    st.builds(
        lambda r, c: DnsRecord(
            name=r.name, type=r.type, content=r.content, ttl=r.ttl, comment=c, id=r.id
        ),
        records(marker=None, all_types=True),
        st.sampled_from([None, "someone else", MARK + "-other"]),
    ),
    max_size=5,
)


def _state(rs):
    return sorted((r.name, r.type, r.content.lower(), r.ttl, r.comment or "") for r in rs)


@settings(max_examples=120)
@given(desired=desired_sets(), actual=ours_actual)
def test_a_plan_applied_to_our_records_yields_the_desired_set(desired, actual):
    changes = plan(desired, actual, MARK)
    assert not changes.conflicts
    assert _state(apply_plan(actual, changes)) == _state(desired)


@settings(max_examples=120)
@given(desired=desired_sets(), actual=ours_actual, foreign=foreign_actual)
def test_records_not_ours_are_never_touched_and_block_only_their_names(desired, actual, foreign):
    changes = plan(desired, actual + foreign, MARK)
    for record in changes.delete:
        assert record.comment == MARK
    for update in changes.update:
        assert update.actual.comment == MARK
    after = apply_plan(actual + foreign, changes)
    for record in foreign:
        assert record in after
    wanted = [d for d in desired if d not in changes.conflicts]
    assert _state([r for r in after if r.is_ours(MARK)]) == _state(wanted)
    for conflict in changes.conflicts:
        assert any(f.name == conflict.name for f in foreign)


@settings(max_examples=80)
@given(desired=desired_sets(), actual=ours_actual, foreign=foreign_actual)
def test_planning_again_after_applying_changes_nothing(desired, actual, foreign):
    after = apply_plan(actual + foreign, plan(desired, actual + foreign, MARK))
    again = plan(desired, after, MARK)
    assert again.writes == 0


@settings(max_examples=80)
@given(actual=ours_actual, cap=st.integers(0, 3), now=st.floats(0, 2000), grace=st.floats(0, 500))
def test_deletes_respect_the_switch_the_grace_and_the_cap(actual, cap, now, grace):
    assert plan([], actual, MARK, allow_deletes=False).delete == ()
    changes = plan([], actual, MARK, now=now, grace=grace, max_deletes=cap)
    assert len(changes.delete) <= cap
    for record in changes.delete:
        assert grace == 0 or now - record.modified_at >= grace
    assert len(changes.delete) + len(changes.spared) == len(actual)


def test_a_record_someone_else_owns_at_our_name_is_a_conflict_not_a_write():
    want = DnsRecord(
        name="a.example.com", type="CNAME", content="relay.example.net", ttl=60, comment=MARK
    )
    theirs = DnsRecord(name="a.example.com", type="TXT", content="v=spf1", comment=None, id="1")
    changes = plan([want], [theirs], MARK)
    assert changes.conflicts == (want,)
    assert changes.writes == 0


def test_an_a_record_beside_a_foreign_txt_is_fine_but_not_beside_a_foreign_cname():
    want = DnsRecord(name="a.example.com", type="A", content="192.0.2.1", ttl=60, comment=MARK)
    txt = DnsRecord(name="a.example.com", type="TXT", content="x", id="1")
    cname = DnsRecord(name="a.example.com", type="CNAME", content="elsewhere.net", id="2")
    assert plan([want], [txt], MARK).create == (want,)
    assert plan([want], [cname], MARK).conflicts == (want,)


def test_a_type_change_deletes_our_old_record_and_creates_the_new_one():
    old = DnsRecord(
        name="a.example.com",
        type="CNAME",
        content="relay.example.net",
        ttl=60,
        comment=MARK,
        id="1",
    )
    new = DnsRecord(name="a.example.com", type="A", content="192.0.2.1", ttl=60, comment=MARK)
    changes = plan([new], [old], MARK)
    assert changes.delete == (old,)
    assert changes.create == (new,)


def test_duplicates_of_ours_are_reduced_to_one():
    want = DnsRecord(name="a.example.com", type="A", content="192.0.2.1", ttl=60, comment=MARK)
    one = DnsRecord(
        name="a.example.com", type="A", content="192.0.2.1", ttl=60, comment=MARK, id="1"
    )
    two = DnsRecord(
        name="a.example.com", type="A", content="192.0.2.9", ttl=60, comment=MARK, id="2"
    )
    changes = plan([want], [two, one], MARK)
    assert changes.unchanged == (one,)
    assert changes.delete == (two,)
