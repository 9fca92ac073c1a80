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
