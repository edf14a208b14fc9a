"""Experiment states and what moves them, as one table.

::

    running --decided--> promoted      (the test was significant: winner rolled out)
    running --stop--> stopped          (an operator stopped it: nothing promoted)
    running --arm_failed--> failed     (an arm's rollout ended without installing)
    running --reassign--> running      (bandit mode moved devices between the arms)

A pair missing from the table is refused with ``TransitionError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from edgefleet.errors import TransitionError

ExperimentState = Literal["running", "promoted", "stopped", "failed"]
ExperimentTrigger = Literal["decided", "stop", "arm_failed", "reassign"]
EXPERIMENT_STATES: tuple[ExperimentState, ...] = get_args(ExperimentState)

TRANSITIONS: Mapping[tuple[ExperimentState, ExperimentTrigger], ExperimentState] = {
    ("running", "decided"): "promoted",
    ("running", "stop"): "stopped",
    ("running", "arm_failed"): "failed",
    ("running", "reassign"): "running",
}
_MOVES: dict[tuple[str, str], ExperimentState] = {key: to for key, to in TRANSITIONS.items()}


def next_experiment_state(state: str, trigger: str) -> ExperimentState:
    """The state an experiment in ``state`` moves to on ``trigger``.

    Raises:
        TransitionError: the table has no such move.
    """
    try:
        return _MOVES[(state, trigger)]
    except KeyError:
        raise TransitionError("experiment", state, trigger) from None
