"""Build-job states and the events that move them, as one table.

A build job is one ``bundle build`` the control plane runs in the background::

    queued --start--> running --succeed--> succeeded
    queued | running --fail--> failed          (the build's own error, a 4xx reason)
    queued | running --interrupt--> failed     (the control plane stopped or restarted)

A pair missing from the table is refused with ``TransitionError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from edgefleet.errors import TransitionError

BuildState = Literal["queued", "running", "succeeded", "failed"]
BuildEvent = Literal["start", "succeed", "fail", "interrupt"]

BUILD_STATES: tuple[BuildState, ...] = get_args(BuildState)
FINISHED_BUILD_STATES = frozenset({"succeeded", "failed"})
UNFINISHED_BUILD_STATES = frozenset({"queued", "running"})

TRANSITIONS: Mapping[tuple[BuildState, BuildEvent], BuildState] = {
    ("queued", "start"): "running",
    ("queued", "fail"): "failed",
    ("queued", "interrupt"): "failed",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "interrupt"): "failed",
}
_MOVES: dict[tuple[str, str], BuildState] = {key: to for key, to in TRANSITIONS.items()}


def next_build_state(state: str, event: str) -> BuildState:
    """The state a build job in ``state`` moves to on ``event``.

    Raises:
        TransitionError: the table has no move from ``state`` on ``event``
            (``machine`` is ``"build"``).
    """
    try:
        return _MOVES[(state, event)]
    except KeyError:
        raise TransitionError("build", state, event) from None
