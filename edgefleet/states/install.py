"""The install state machine: one vocabulary for the agent's journal, its reports and the
control plane's view of each device of a rollout.

The agent records every state in its journal before it acts on it and reports the
same names in ``InstallReport``; the whole machine is the ``TRANSITIONS`` table::

    offered -> downloading -> verified -> staged -> smoke_tested ----------> active -> committed
       |            |             |          |          |    |               ^        |
       |            |             |          |          |    +--> deferred --+        |
       |            |             |          |          |    +--> armed ----+        |
       |            |             |          |          |            |                v
       +------------+-------------+----------+----------+------------+--> failed  rolled_back

``active`` is the probation period: the new model serves while the previous one stays
in the other slot. On start-up ``RESUME`` says where a saved state continues; every
state not listed rolls back.

``deferred`` is a smoke-tested slot waiting for the switch: the device's application
holds the update lock, or the device is outside its maintenance window
(``edgefleet.agent.install.deferral``). It is not terminal and not a failure: the old
model keeps serving, and when the lock is released or expires, or the window opens,
the install moves on to ``active``. A restart in ``deferred`` resumes the wait
(``"await_switch"``: the staged slot is re-verified against its manifest, then the
wait goes on) instead of rolling back, so an app's lock or a closed window never costs
a download. For the control plane a ``deferred`` device is still installing
(``INSTALLING_STATES``): its install deadline keeps running, and a device deferred past
it is ``timed_out`` like any other.

The control plane tracks a device of a rollout in ``DeviceInstallState``: the states a
device reports (``committed`` recorded as ``active``, see ``device_state``) plus those
only the control plane knows (``pending``, ``rolling_back``, ``shadowing``,
``superseded``, ``cancelled``, ``timed_out``). The sets below are derived from the table
where the table says it, so a new state is added in one place.

``armed`` is ``deferred``'s sibling for an atomic rollout (``BundleOffer.atomic``): a
smoke-tested slot waiting for the control plane's signed switch order
(``edgefleet.agent.install.switch_order``) rather than for the lock or the window. It
survives a restart the same way (``"await_switch"``); a ``drop_staged`` command, an
expired order or newer work ends it in ``failed`` with the old model still serving.

``timed_out`` is the control plane's verdict on a device that missed its install
deadline (or its wave's): its install is over for the wave (``FINISHED_STATES``) and
counts as a failure for the install gate (``GATE_FAILED_STATES``), but nothing on the
device says so: the row keeps the state it last reported (``timed_out_in``), and only
an operator's ``retry`` offers it again (``RETRYABLE_DEVICE_STATES``).
"""

from __future__ import annotations

from typing import Literal, cast

InstallState = Literal[
    "offered",
    "downloading",
    "verified",
    "staged",
    "smoke_tested",
    "deferred",  # smoke-tested, waiting for the update lock or the maintenance window
    "armed",  # atomic rollout: smoke-tested, waiting for the signed fleet-wide switch order
    "active",  # switched to the new model; probation running
    "committed",  # probation passed: the previous slot is no longer the fallback
    "failed",
    "rolled_back",
]
InstallEvent = Literal[
    "start", "downloaded", "unpacked", "smoke_passed", "defer", "arm", "switched",
    "probation_passed", "error", "breach", "rollback",
]  # fmt: skip

TRANSITIONS: dict[tuple[InstallState, InstallEvent], InstallState] = {
    ("offered", "start"): "downloading",
    ("downloading", "downloaded"): "verified",
    ("verified", "unpacked"): "staged",
    ("staged", "smoke_passed"): "smoke_tested",
    ("smoke_tested", "switched"): "active",
    ("smoke_tested", "defer"): "deferred",
    ("deferred", "switched"): "active",
    ("smoke_tested", "arm"): "armed",
    ("armed", "switched"): "active",
    ("active", "probation_passed"): "committed",
    ("active", "breach"): "rolled_back",
    ("active", "rollback"): "rolled_back",
    ("active", "error"): "rolled_back",
    ("committed", "rollback"): "rolled_back",
    ("offered", "error"): "failed",
    ("downloading", "error"): "failed",
    ("verified", "error"): "failed",
    ("staged", "error"): "failed",
    ("smoke_tested", "error"): "failed",
    ("deferred", "error"): "failed",
    ("armed", "error"): "failed",
}
"""``(state, event) -> next state``; a pair not listed is not allowed."""

ResumeAction = Literal["reinstall", "await_switch", "probation"]
RESUME: dict[InstallState, ResumeAction] = {
    # Nothing was switched yet and every step up to here is repeatable: run the
    # install again; the download continues from its .part file or ngclient's cache.
    "offered": "reinstall",
    "downloading": "reinstall",
    "verified": "reinstall",
    # Smoke-tested and waiting for the lock or the window: re-verify the staged slot
    # against its manifest and wait on (a slot that fails the check rolls back).
    "deferred": "await_switch",
    # Armed for an atomic switch: the same, waiting for the signed switch order.
    "armed": "await_switch",
    # The new model was switched in and verified: restart its probation period.
    "active": "probation",
}
"""Where a saved state continues on start-up. ``staged`` and ``smoke_tested`` (a slot
unpacked but not yet proven) and anything else not listed roll back."""

ABORT_EVENTS: frozenset[InstallEvent] = frozenset({"error", "breach", "rollback"})
"""Events that end an install early rather than move it on."""

INSTALLING_STATES: frozenset[InstallState] = frozenset(
    state for (state, event), after in TRANSITIONS.items() if event == "error" and after == "failed"
)
"""Before the switch: an error here fails the install and the old model keeps serving."""

FAILED_STATES: frozenset[InstallState] = frozenset(
    after for (_state, event), after in TRANSITIONS.items() if event in ABORT_EVENTS
)
"""Where an install that did not succeed ends: ``failed`` or ``rolled_back``."""

TERMINAL: frozenset[InstallState] = FAILED_STATES | {"committed"}
"""The journal's finished states: nothing is under way, nothing to resume."""


def abort_event(state: InstallState) -> InstallEvent:
    """The event that ends an unfinished install in ``state``: ``breach`` once switched
    (the previous slot serves again), ``error`` before (nothing was switched)."""
    return "breach" if (state, "breach") in TRANSITIONS else "error"


# -- the control plane's view of one device of a rollout ---------------------------------

DeviceInstallState = Literal[
    "pending",  # in a later wave, not offered yet
    "offered",
    "downloading",
    "verified",
    "staged",
    "smoke_tested",
    "deferred",  # staged and smoke-tested; the switch waits for the lock or the window
    "armed",  # atomic rollout: staged and smoke-tested, waiting for the switch order
    "active",
    "failed",
    "rolling_back",  # a rollback command was sent
    "rolled_back",
    "shadowing",  # shadow strategy: the candidate runs beside the active model
    "superseded",  # a newer rollout took the device over
    "cancelled",  # the rollout ended before the device's wave
    "timed_out",  # missed its install deadline or its wave's; only a retry offers it again
]

_REPORTED_AS: dict[InstallState, DeviceInstallState] = {"committed": "active"}


def device_state(reported: InstallState) -> DeviceInstallState:
    """The device state a reported install state is recorded as (``committed`` is
    ``active``: the rollout only needs to know the new model serves)."""
    # Every other install state is a device state of the same name.
    return _REPORTED_AS.get(reported) or cast("DeviceInstallState", reported)


TIMED_OUT: DeviceInstallState = "timed_out"

GATE_FAILED_STATES: frozenset[DeviceInstallState] = frozenset(
    {*(device_state(state) for state in FAILED_STATES), TIMED_OUT}
)
"""What the install-failure gate counts as failed: the agent's ``FAILED_STATES`` and
devices the control plane timed out."""
FINISHED_STATES: frozenset[DeviceInstallState] = GATE_FAILED_STATES | {"active", "shadowing"}
"""A device whose install is over for its wave, for better or worse: serving the new
model (or shadowing it), or one of ``GATE_FAILED_STATES``."""
RETRYABLE_DEVICE_STATES: frozenset[DeviceInstallState] = frozenset({"failed", TIMED_OUT})
"""What an operator's ``retry`` offers again (nothing else is ever offered twice
unasked, except to a device coming back online)."""
INACTIVE_ROW_STATES: frozenset[DeviceInstallState] = frozenset(
    {"pending", "superseded", "cancelled"}
)
"""Rows not (or no longer) taking part in their wave."""
TERMINAL_DEVICE_STATES: frozenset[DeviceInstallState] = FINISHED_STATES | {
    "superseded",
    "cancelled",
}
"""No later report of an install in progress may move a device out of these."""
