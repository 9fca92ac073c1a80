"""Ctrl-C during `relay events --follow`: held back while an API call runs, never lost."""

from __future__ import annotations

import signal

import pytest

from relay.cli.admin import CtrlC


def call(ctrl_c: CtrlC, presses: int, steps: list[str]) -> None:
    """A stand-in API call during which Ctrl-C is pressed ``presses`` times."""
    with ctrl_c.deferred():
        for _ in range(presses):
            ctrl_c(signal.SIGINT, None)
            steps.append("went on")
        steps.append("done")


def test_ctrl_c_between_calls_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt):
        CtrlC()(signal.SIGINT, None)


def test_ctrl_c_during_a_call_interrupts_once_it_is_done():
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        call(CtrlC(), 1, steps)
    assert steps == ["went on", "done"]


def test_a_second_ctrl_c_during_a_call_interrupts_it():
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        call(CtrlC(), 2, steps)
    assert steps == ["went on"]


def test_a_call_without_ctrl_c_ends_quietly():
    ctrl_c, steps = CtrlC(), []
    call(ctrl_c, 0, steps)
    assert steps == ["done"]
    assert not ctrl_c.pressed
