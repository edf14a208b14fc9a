"""The install vocabulary's derived sets agree with its transition table."""

from __future__ import annotations

from typing import get_args

from edgefleet.states.install import (
    FAILED_STATES,
    FINISHED_STATES,
    GATE_FAILED_STATES,
    INSTALLING_STATES,
    RESUME,
    RETRYABLE_DEVICE_STATES,
    TERMINAL,
    TERMINAL_DEVICE_STATES,
    TIMED_OUT,
    TRANSITIONS,
    DeviceInstallState,
    InstallState,
    abort_event,
    device_state,
)


def test_the_sets_follow_the_table() -> None:
    assert {
        "offered", "downloading", "verified", "staged", "smoke_tested", "deferred", "armed",
    } == INSTALLING_STATES  # fmt: skip
    assert {"failed", "rolled_back"} == FAILED_STATES
    assert {"committed", "failed", "rolled_back"} == TERMINAL
    assert not {state for state, _event in TRANSITIONS} & (TERMINAL - {"committed"})
    assert set(RESUME) <= set(get_args(InstallState)) - TERMINAL


def test_every_state_is_reached_from_offered() -> None:
    reached = {"offered"}
    while (
        more := {after for (state, _e), after in TRANSITIONS.items() if state in reached} - reached
    ):
        reached |= more
    assert reached == set(get_args(InstallState))


def test_the_device_vocabulary_holds_every_reported_state() -> None:
    device_states = set(get_args(DeviceInstallState))
    assert {device_state(s) for s in get_args(InstallState)} <= device_states
    assert device_state("committed") == "active"
    assert FAILED_STATES | {"timed_out"} == GATE_FAILED_STATES
    assert GATE_FAILED_STATES | {"active", "shadowing"} == FINISHED_STATES
    assert FINISHED_STATES | {"superseded", "cancelled"} == TERMINAL_DEVICE_STATES


def test_an_unfinished_install_aborts_by_breach_only_once_switched() -> None:
    assert abort_event("active") == "breach"
    assert {abort_event(s) for s in INSTALLING_STATES} == {"error"}


def test_timed_out_is_the_control_planes_own_finished_and_failed_state() -> None:
    assert TIMED_OUT in get_args(DeviceInstallState)
    assert TIMED_OUT not in get_args(InstallState)  # no agent ever reports it
    assert TIMED_OUT in FINISHED_STATES and TIMED_OUT in GATE_FAILED_STATES
    assert TIMED_OUT in TERMINAL_DEVICE_STATES  # a late progress report cannot move it
    assert TIMED_OUT not in INSTALLING_STATES


def test_only_failed_and_timed_out_devices_are_retried() -> None:
    assert {"failed", "timed_out"} == RETRYABLE_DEVICE_STATES
    assert RETRYABLE_DEVICE_STATES <= GATE_FAILED_STATES


def test_deferred_waits_between_the_smoke_test_and_the_switch_and_is_not_terminal() -> None:
    assert TRANSITIONS[("smoke_tested", "defer")] == "deferred"
    assert TRANSITIONS[("deferred", "switched")] == "active"
    assert TRANSITIONS[("deferred", "error")] == "failed"
    assert "deferred" not in TERMINAL and "deferred" not in TERMINAL_DEVICE_STATES
    # The control plane counts it as installing: its install deadline keeps running.
    assert "deferred" in INSTALLING_STATES and device_state("deferred") == "deferred"
    assert RESUME["deferred"] == "await_switch"
