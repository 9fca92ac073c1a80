"""Per-stream state machine: windows, half-close, cancel, reset."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import FlowControlError, LocalStreamError, StreamStateError
from relay.wire.streams import MAX_WINDOW, StreamState


def make(send=1000, recv=1000):
    return StreamState(1, send_window=send, recv_window=recv)


def test_sender_stops_at_zero_credit_and_resumes_on_window():
    s = make(send=100)
    assert s.sendable(150) == 100
    s.on_send(100)
    assert s.sendable(10) == 0
    s.on_window(40)
    assert s.sendable(100) == 40


def test_sending_beyond_credit_is_a_local_error():
    s = make(send=10)
    with pytest.raises(LocalStreamError):
        s.on_send(11)


def test_peer_exceeding_its_window_is_a_flow_control_error():
    s = make(recv=100)
    s.on_receive(100)
    with pytest.raises(FlowControlError):
        s.on_receive(1)


def test_credit_is_granted_back_in_quarter_windows():
    s = make(recv=1000)
    s.on_receive(1000)
    assert s.on_consumed(200) == 0
    assert s.on_consumed(50) == 250
    assert s.recv_window == 250
    s.on_receive(250)


def test_data_after_end_is_a_state_error():
    s = make()
    s.on_receive(10, end=True)
    with pytest.raises(StreamStateError):
        s.on_receive(1)


def test_half_close_each_direction_then_closed():
    s = make()
    s.on_send(5, end=True)
    assert not s.closed
    with pytest.raises(LocalStreamError):
        s.sendable(1)
    s.on_receive(5, end=True)
    assert s.closed


def test_reset_closes_both_directions_and_stops_grants():
    s = make()
    s.on_receive(500)
    s.on_reset()
    assert s.closed
    assert s.on_consumed(500) == 0
    with pytest.raises(LocalStreamError):
        s.on_send(1)
    s.on_window(10)  # a window update in flight after a reset is harmless


def test_window_overflow_is_a_flow_control_error():
    s = make(send=MAX_WINDOW - 5)
    with pytest.raises(FlowControlError):
        s.on_window(10)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), max_size=60))
def test_received_but_unconsumed_bytes_never_exceed_the_window(steps):
    """Whatever the interleaving, buffered bytes stay within the initial window."""
    window = 1000
    s = make(recv=window)
    buffered = 0
    for send, consume in steps:
        n = min(send, s.recv_window)
        s.on_receive(n)
        buffered += n
        take = min(consume, buffered)
        s.on_consumed(take)
        buffered -= take
        assert buffered <= window
        assert 0 <= s.recv_window <= window


# -- window growth (StreamState.grow) ----------------------------------------------------

BIG = 1 << 30  # room and limit that do not bind


def consume_window_fraction(s, fraction: float) -> int:
    """The peer sends ``fraction`` of the window and our consumer takes it: the grant."""
    n = int(s.recv_size * fraction)
    s.on_receive(n)
    return s.on_consumed(n)


def epoch(s, fraction: float, now: float, room: int = BIG, limit: int = BIG) -> int:
    """``fraction`` of the window consumed by ``now`` (0.05 s round trips): the growth."""
    return s.grow(consume_window_fraction(s, fraction), now=now, rtt=0.05, room=room, limit=limit)


def started(recv: int = 1000) -> StreamState:
    """A stream whose first epoch (which only starts the clock) ended at 100 s."""
    s = make(recv=recv)
    assert epoch(s, 0.5, now=100.0) == 0
    assert s.recv_size == recv
    return s


def test_a_window_consumed_within_round_trips_doubles():
    s = started()
    # Half a window in 0.03 s with a 0.05 s round trip: the window set the pace.
    assert epoch(s, 0.5, now=100.03) == 1000
    assert (s.recv_size, s.grown) == (2000, 1000)
    assert s.recv_window == 2000  # what the peer may send once both grants arrive


def test_a_slow_consumer_does_not_grow_the_window():
    s = started()
    # Half a window took 0.5 s: ten round trips, the consumer sets the pace.
    assert epoch(s, 0.5, now=100.5) == 0
    assert s.recv_size == 1000


def test_an_epoch_ends_only_after_half_a_window():
    s = started()
    assert epoch(s, 0.3, now=100.01) == 0
    assert epoch(s, 0.3, now=100.02) == 1000


def test_growth_stops_at_the_limit_and_at_the_tunnels_room():
    s = started()
    grown = [epoch(s, 0.5, now=100.0 + i / 1000, limit=2500) for i in range(1, 5)]
    assert grown == [1000, 500, 0, 0]
    assert s.recv_size == 2500
    assert epoch(started(), 0.5, now=100.001, room=300) == 300


def test_an_ended_or_reset_stream_does_not_grow():
    s = started()
    s.on_receive(500, end=True)
    assert s.grow(500, now=100.001, rtt=0.05, room=BIG, limit=BIG) == 0
    r = started()
    r.on_receive(500)
    r.on_reset()
    assert r.grow(500, now=100.001, rtt=0.05, room=BIG, limit=BIG) == 0


def test_the_first_epoch_only_starts_the_clock_early_on_a_monotonic_clock():
    # loop.time() counts from boot: a relay started a second after its machine booted
    # would otherwise judge its first epoch as 1 s long and grow on a long round trip.
    s = make(recv=1000)
    grant = consume_window_fraction(s, 0.5)
    assert s.grow(grant, now=1.0, rtt=1.0, room=BIG, limit=BIG) == 0
    assert s.recv_size == 1000


@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000), st.floats(0, 0.2)), max_size=80),
    st.floats(0.001, 1.0),
)
def test_what_is_buffered_the_peers_credit_and_the_unacked_make_the_window(steps, rtt):
    """Exactly, whatever the interleaving: nothing of the window is lost or made up across
    grants and growth, so buffered bytes stay within it, and it within its limit."""
    s = make(recv=1000)
    buffered, now = 0, 100.0
    for send, consume, dt in steps:
        n = min(send, s.recv_window)
        s.on_receive(n)
        buffered += n
        take = min(consume, buffered)
        grant = s.on_consumed(take)
        buffered -= take
        now += dt
        if grant:
            s.grow(grant, now=now, rtt=rtt, room=BIG, limit=8000)
        assert buffered + s.recv_window + s._unacked == s.recv_size
        assert s.recv_size == 1000 + s.grown <= 8000
