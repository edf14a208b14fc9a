"""The build-job state machine: every move allowed, and everything else refused."""

from __future__ import annotations

import itertools

import pytest

from edgefleet.errors import TransitionError
from edgefleet.states.build import (
    BUILD_STATES,
    FINISHED_BUILD_STATES,
    TRANSITIONS,
    UNFINISHED_BUILD_STATES,
    next_build_state,
)

# Spelled out again on purpose: a change to the table has to change this too.
ALLOWED = [
    ("queued", "start", "running"),
    ("queued", "fail", "failed"),
    ("queued", "interrupt", "failed"),
    ("running", "succeed", "succeeded"),
    ("running", "fail", "failed"),
    ("running", "interrupt", "failed"),
]
EVENTS = ("start", "succeed", "fail", "interrupt")


def test_table_is_exactly_the_allowed_moves() -> None:
    assert sorted((s, e, t) for (s, e), t in TRANSITIONS.items()) == sorted(ALLOWED)
    assert set(BUILD_STATES) == FINISHED_BUILD_STATES | UNFINISHED_BUILD_STATES


@pytest.mark.parametrize(("state", "event"), list(itertools.product(BUILD_STATES, EVENTS)))
def test_moves_outside_the_table_are_refused(state: str, event: str) -> None:
    allowed = {(s, e): t for s, e, t in ALLOWED}
    if (state, event) in allowed:
        assert next_build_state(state, event) == allowed[(state, event)]
    else:
        with pytest.raises(TransitionError, match=f"build in state {state}"):
            next_build_state(state, event)
