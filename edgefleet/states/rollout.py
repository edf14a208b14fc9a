"""Rollout states, the operator actions and orchestrator events that move them, as one table.

A rollout's *state* is what an operator sees and acts on; inside ``in_progress`` and
``paused`` the control plane also tracks the current wave's *phase* (installing,
soaking, awaiting promotion), which is not part of this vocabulary. The whole
machine is ``TRANSITIONS``, ``(state, trigger) -> next state``::

    draft --start--> in_progress --pause--> paused --resume--> in_progress
    in_progress | paused --promote--> (same state: the next wave may start)
    in_progress | paused --retry--> (same state: failed / timed-out devices offered again)
    failed --retry--> in_progress                          (the retried devices install)
    draft | in_progress | paused --abort--> aborted       (the wave rolls back)
    in_progress --gate_breached--> aborted                 (the orchestrator aborts)
    in_progress --all_waves_passed--> complete
    in_progress --devices_failed--> failed                 (no gates, a device failed)
    in_progress | paused | complete | aborted | failed --rollback--> rolled_back

Operators send the ``OperatorAction`` triggers (the API's ``POST
/rollouts/{id}/{action}``); only the orchestrator fires the ``OrchestratorEvent`` ones.
A pair missing from the table is refused with ``TransitionError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from edgefleet.errors import TransitionError

RolloutState = Literal[
    "draft",  # created, nothing offered yet; ``start`` begins wave 1
    "in_progress",  # a wave is installing, soaking or waiting for promotion
    "paused",  # no new wave starts; reports are still recorded
    "complete",  # every wave passed its gates (and every device is done)
    "aborted",  # a gate breached or an operator aborted: the wave rolled back
    "failed",  # no gates and a device failed or timed out (the single-wave default)
    "rolled_back",  # an operator rolled every device of the rollout back
]
RUNNING_ROLLOUT_STATES = frozenset({"in_progress", "paused"})

OperatorAction = Literal["start", "pause", "resume", "promote", "retry", "abort", "rollback"]
OrchestratorEvent = Literal[
    "gate_breached",  # a wave's gate breached, or its evidence did not come in time
    "all_waves_passed",  # the last wave passed and no device is still installing
    "devices_failed",  # as above, but a device failed and no gate allowed for it
]
RolloutTrigger = Literal[OperatorAction, OrchestratorEvent]

ROLLOUT_STATES: tuple[RolloutState, ...] = get_args(RolloutState)
OPERATOR_ACTIONS: tuple[OperatorAction, ...] = get_args(OperatorAction)

TRANSITIONS: Mapping[tuple[RolloutState, RolloutTrigger], RolloutState] = {
    ("draft", "start"): "in_progress",
    ("draft", "abort"): "aborted",
    ("in_progress", "pause"): "paused",
    ("in_progress", "promote"): "in_progress",
    ("in_progress", "retry"): "in_progress",
    ("in_progress", "abort"): "aborted",
    ("in_progress", "rollback"): "rolled_back",
    ("in_progress", "gate_breached"): "aborted",
    ("in_progress", "all_waves_passed"): "complete",
    ("in_progress", "devices_failed"): "failed",
    ("paused", "resume"): "in_progress",
    ("paused", "promote"): "paused",
    ("paused", "retry"): "paused",
    ("paused", "abort"): "aborted",
    ("paused", "rollback"): "rolled_back",
    ("complete", "rollback"): "rolled_back",
    ("aborted", "rollback"): "rolled_back",
    ("failed", "retry"): "in_progress",
    ("failed", "rollback"): "rolled_back",
}
_MOVES: dict[tuple[str, str], RolloutState] = {key: to for key, to in TRANSITIONS.items()}


def next_rollout_state(state: str, trigger: str) -> RolloutState:
    """The state a rollout in ``state`` moves to on ``trigger``.

    Args:
        state: the rollout's current state (as stored: a plain string).
        trigger: an ``OperatorAction`` or an ``OrchestratorEvent``.

    Returns:
        The next state; the same one for ``promote``, which moves the wave, not the rollout.

    Raises:
        TransitionError: the table has no move from ``state`` on ``trigger``
            (``machine`` is ``"rollout"``).
    """
    try:
        return _MOVES[(state, trigger)]
    except KeyError:
        raise TransitionError("rollout", state, trigger) from None
