"""The presence fold: order-free, duplicate-proof, and right about what happened."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from directory.events import (
    Connected,
    Disconnected,
    HostChanged,
    HostRegistered,
    HostRemoved,
    MachineStarted,
)
from directory.presence import Presence, fold, fold_all, join, lift

H = "h_0000000000000001"


def connected(epoch, at, machine="m1", host=H, addr="10.0.0.1", version="1.0"):
    return Connected(
        host_id=host,
        machine_id=machine,
        epoch=epoch,
        remote_addr=addr,
        agent_version=version,
        at=at,
    )


def disconnected(epoch, at, reason="closed", machine="m1", host=H):
    return Disconnected(host_id=host, machine_id=machine, epoch=epoch, reason=reason, at=at)


def state(events):
    return fold_all(events).get(H)


# --- behaviour, case by case ------------------------------------------------------------


def test_connect_then_close_is_offline_with_the_reason_and_both_times():
    p = state(
        [HostRegistered(host_id=H, slug="s", name="n", at=1), connected(1, 2), disconnected(1, 3)]
    )
    assert p == Presence(
        H,
        online=False,
        machine_id="m1",
        epoch=1,
        last_connected_at=2,
        last_disconnected_at=3,
        disconnect_reason="closed",
        agent_version="1.0",
        remote_addr="10.0.0.1",
        connected_epoch=1,
        disconnected_epoch=1,
    )


def test_a_late_disconnect_of_an_older_epoch_never_marks_the_newer_connection_offline():
    p = state([connected(1, 1), connected(2, 2, machine="m2"), disconnected(1, 3, "replaced")])
    assert p.online and p.epoch == 2 and p.machine_id == "m2"
    # ... and it is the newest disconnect seen, so it is reported as the last one.
    assert p.disconnect_reason == "replaced" and p.last_disconnected_at == 3


def test_a_duplicate_of_an_old_connect_changes_nothing():
    history = [connected(1, 1), disconnected(1, 2), connected(2, 3, machine="m2")]
    assert state([*history, connected(1, 1)]) == state(history)


def test_disconnect_before_its_connect_still_ends_offline_with_the_connect_details():
    p = state([disconnected(3, 5, "missed_pong"), connected(3, 4, version="2.0")])
    assert not p.online
    assert (p.epoch, p.disconnect_reason, p.agent_version, p.last_connected_at) == (
        3,
        "missed_pong",
        "2.0",
        4,
    )


def test_the_machines_own_reason_beats_the_reconcilers_owner_expired_in_either_order():
    a = state([connected(1, 1), disconnected(1, 5, "owner_expired"), disconnected(1, 2, "closed")])
    b = state([connected(1, 1), disconnected(1, 2, "closed"), disconnected(1, 5, "owner_expired")])
    assert a == b
    assert a.disconnect_reason == "closed" and a.last_disconnected_at == 2


def test_repeated_owner_expired_keeps_the_first_detection():
    p = state(
        [connected(1, 1), disconnected(1, 7, "owner_expired"), disconnected(1, 5, "owner_expired")]
    )
    assert p.last_disconnected_at == 5


def test_removal_is_a_tombstone_that_nothing_revives():
    p = state(
        [connected(1, 1), HostRemoved(host_id=H, slug="s", at=2), disconnected(1, 3, "removed")]
    )
    assert p == Presence(H, removed=True)
    assert fold(p, connected(9, 9)) == p


def test_events_that_say_nothing_about_presence_are_ignored():
    start = state([connected(1, 1)])
    assert fold(start, MachineStarted(machine_id="m1", address="x")) is start
    assert fold(start, HostChanged(host_id=H, slug="s2")) is start
    assert lift(MachineStarted(machine_id="m1", address="x")) is None
    assert fold(None, HostChanged(host_id=H, slug="s2")) is None


def test_registration_alone_is_known_and_offline():
    p = state([HostRegistered(host_id=H, slug="s", name="n")])
    assert p == Presence(H)
    assert not p.online and p.epoch is None


def test_join_refuses_to_mix_hosts():
    try:
        join(Presence("a"), Presence("b"))
    except ValueError:
        return
    raise AssertionError("joined two hosts")


# --- Hypothesis: any delivery of a valid history folds like the history ---------------

MACHINES = ("m1", "m2", "m3")
ENDINGS = (
    "closed",
    "missed_pong",
    "drain",
    "replaced",
    "owner_expired",
    "killed_then_closed",
    "open",
)


@dataclass
class History:
    events: list
    online: bool
    epoch: int | None
    reason: str | None
    removed: bool


@st.composite
def histories(draw, host=H):
    """A plausible life of one host: connections with rising epochs, ended in every way."""
    t = 100.0
    events = [HostRegistered(host_id=host, slug="s", name="n", at=t)]
    epoch = draw(st.integers(0, 3))  # epochs need not start at 1 (a log trimmed at the head)
    reason = None
    online = False
    open_epoch = None
    n = draw(st.integers(0, 5))
    for i in range(n):
        epoch += draw(st.integers(1, 2))  # a failed claim can skip an epoch
        machine = draw(st.sampled_from(MACHINES))
        t += draw(st.floats(0.001, 10))
        events.append(
            connected(
                epoch,
                t,
                machine,
                host,
                addr=f"10.0.0.{draw(st.integers(1, 9))}",
                version=draw(st.sampled_from(["1.0", "1.1"])),
            )
        )
        last = i == n - 1
        ending = draw(st.sampled_from(ENDINGS if last else ENDINGS[:-1]))
        t += draw(st.floats(0.001, 10))
        if ending == "open":
            online, open_epoch = True, (epoch, machine)
            continue
        if ending == "replaced" and not last:
            # The next connection arrives first; the old one is closed 4002 afterwards.
            online = False
            nxt = epoch + 1
            nmachine = draw(st.sampled_from(MACHINES))
            events.append(connected(nxt, t, nmachine, host))
            t += 0.001
            events.append(disconnected(epoch, t, "replaced", machine, host))
            epoch = nxt
            reason = "replaced"
            t += draw(st.floats(0.001, 10))
            events.append(disconnected(epoch, t, "closed", nmachine, host))
            reason = "closed"
            continue
        if ending == "killed_then_closed":
            # The reconciler guessed first; the machine's own (delayed) report wins.
            events.append(disconnected(epoch, t, "owner_expired", machine, host))
            events.append(disconnected(epoch, t - 0.0005, "closed", machine, host))
            reason = "closed"
        else:
            events.append(
                disconnected(epoch, t, "closed" if ending == "replaced" else ending, machine, host)
            )
            reason = "closed" if ending == "replaced" else ending
        online = False
    removed = draw(st.booleans()) and draw(st.booleans())
    if removed:
        t += 1
        events.append(HostRemoved(host_id=host, slug="s", at=t))
        if open_epoch is not None:
            events.append(disconnected(open_epoch[0], t + 0.001, "removed", open_epoch[1], host))
    return History(events, online and not removed, epoch if n else None, reason, removed)


@st.composite
def deliveries(draw, events):
    """The same events reordered, with some delivered more than once."""
    order = draw(st.permutations(events))
    extra = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    delivered = list(order)
    for event in extra:
        delivered.insert(draw(st.integers(0, len(delivered))), event)
    return delivered


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_interleaving_and_duplication_folds_like_the_in_order_history(data):
    history = data.draw(histories())
    delivered = data.draw(deliveries(history.events))
    assert fold_all(delivered) == fold_all(history.events)


@settings(max_examples=150, deadline=None)
@given(histories())
def test_the_in_order_fold_says_what_happened(history):
    p = fold_all(history.events)[H]
    if history.removed:
        assert p == Presence(H, removed=True)
        return
    assert p.online is history.online
    assert p.epoch == history.epoch
    if not history.online and history.epoch is not None:
        assert p.disconnect_reason == history.reason


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_many_hosts_interleaved_fold_independently(data):
    hosts = [f"h_{i:016x}" for i in range(3)]
    lives = [data.draw(histories(host)) for host in hosts]
    merged = data.draw(deliveries([e for life in lives for e in life.events]))
    folded = fold_all(merged)
    for host, life in zip(hosts, lives, strict=True):
        assert folded[host] == fold_all(life.events)[host]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_join_is_a_semilattice(data):
    events = data.draw(histories()).events
    parts = [lift(e) for e in events]
    parts = [p for p in parts if p is not None]
    a, b, c = (data.draw(st.sampled_from(parts)) for _ in range(3))
    na = join(a, a)
    assert join(na, na) == na  # idempotent (once normalized)
    assert join(a, b) == join(b, a)
    assert join(join(a, b), c) == join(a, join(b, c))
