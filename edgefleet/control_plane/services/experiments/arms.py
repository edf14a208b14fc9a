"""An experiment's arms: which bundle each is, and how devices reach it.

A device reaches an arm through the ordinary rollout path: a rollout of the arm's bundle
to it (``deliver_arm``), or, to go back from the newer release to the older one (which a
device would refuse as an offer), a rollback command through the rollouts that delivered
the newer one (``roll_back_arm``). Every rollout an arm used is kept in
``Experiment.arm_rollouts``.

In ``requests`` mode arm B reaches the cohort as a challenger (``deliver_challenger``):
a shadow rollout of its bundle (signed, verified and loaded beside the active model,
which stays arm A), whose wave soaks for as long as the experiment can run so that it
never ends on its own, and one ``shadow_start`` per device carrying the ``split``
(the experiment and arm B's share of that device's requests; ``send_split``). The
command is idempotent on the device, so the share is sent again whenever it moves and
on every refresh (a device that restarted took the rollout's plain ``shadow_start`` on
reconnecting and runs B as a plain shadow until then).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.tables import (
    Bundle,
    Experiment,
    Rollout,
    RolloutCreate,
    RolloutDevice,
)
from edgefleet.control_plane.services.rollouts.lifecycle import act_on_rollout, create_rollout
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher
from edgefleet.control_plane.services.rollouts.waves import send_rollback
from edgefleet.messages import DeviceCommand

LOWER_IS_BETTER = frozenset({"error_rate", "latency_ms"})
REQUEST_MODES = frozenset({"requests", "requests_bandit"})
CHALLENGER_SOAK_S = 7 * 86_400.0
"""The challenger's shadow rollout soaks this long (the most a rollout may), so it holds
its wave while the experiment runs; the decision or a stop ends it."""


def splits_requests(experiment: Experiment) -> bool:
    """Whether the experiment splits each device's requests rather than the devices."""
    return experiment.mode in REQUEST_MODES


def higher_is_better(experiment: Experiment) -> bool:
    """Whether a larger value of the experiment's metric is the better one."""
    if experiment.metric == "outcome":
        return experiment.outcome_goal == "maximize"
    return experiment.metric not in LOWER_IS_BETTER


def bundle_of(session: Session, bundle_id: str) -> Bundle:
    bundle = session.get(Bundle, bundle_id)
    if bundle is None:
        raise NotFoundError(f"bundle {bundle_id} not found")
    return bundle


def arm_bundle(experiment: Experiment, arm: str) -> str:
    return experiment.bundle_a if arm == "A" else experiment.bundle_b


def deliver_arm(
    session: Session,
    publisher: FleetPublisher,
    experiment: Experiment,
    arm: str,
    devices: Sequence[str],
    actor: str,
) -> int:
    """Offer arm ``arm``'s bundle to ``devices`` by an ordinary rollout; its id."""
    rollout = create_rollout(
        session=session,
        publisher=publisher,
        rollout_in=RolloutCreate(bundle_id=arm_bundle(experiment, arm), device_ids=list(devices)),
        actor=actor,
    )
    assert rollout.id is not None
    experiment.arm_rollouts = [
        *(experiment.arm_rollouts or []),
        {"arm": arm, "rollout_id": rollout.id, "devices": sorted(devices)},
    ]
    return rollout.id


def reload_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id, populate_existing=True)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return experiment


def claim_experiment(
    session: Session, experiment_id: int, *, skip_locked: bool
) -> Experiment | None:
    """Lock the experiment's row for this transaction and read it fresh (as rollouts do)."""
    if session.get_bind().dialect.name != "sqlite":
        query = select(Experiment.id).where(Experiment.id == experiment_id)
        if session.exec(query.with_for_update(skip_locked=skip_locked)).first() is None:
            return None
    session.execute(
        update(Experiment)
        .where(col(Experiment.id) == experiment_id)
        .values(passes=Experiment.passes + 0)
    )
    return session.get(Experiment, experiment_id, populate_existing=True)


def roll_back_arm(
    session: Session,
    publisher: FleetPublisher,
    experiment: Experiment,
    arm: str,
    devices: Sequence[str],
) -> None:
    """Roll ``devices`` back from ``arm``'s bundle, through the rollouts that delivered it."""
    wanted = set(devices)
    for entry in experiment.arm_rollouts or []:
        if entry["arm"] != arm or entry.get("rollout_id") is None:
            continue
        rollout = session.get(Rollout, int(entry["rollout_id"]))
        if rollout is None:
            continue
        rows = session.exec(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout.id)
            .where(col(RolloutDevice.device_id).in_(sorted(wanted)))
        ).all()
        send_rollback(
            session=session,
            publisher=publisher,
            rollout=rollout,
            rows=rows,
            reason=f"experiment {experiment.id}: bandit moved the device to the other arm",
        )
    session.commit()


def challenger_rollouts(session: Session, experiment: Experiment) -> list[Rollout]:
    """The shadow rollouts that delivered arm B as a challenger, oldest first."""
    rollouts = []
    for entry in experiment.arm_rollouts or []:
        if entry.get("by") == "challenger" and entry.get("rollout_id") is not None:
            rollout = session.get(Rollout, int(entry["rollout_id"]))
            if rollout is not None:
                rollouts.append(rollout)
    return rollouts


def split_command(
    bundle: Bundle, rollout_id: int | None, experiment_id: int, share: float
) -> DeviceCommand:
    """The ``shadow_start`` that makes ``bundle`` answer ``share`` of a device's requests."""
    return DeviceCommand(
        command="shadow_start",
        rollout_id=rollout_id,
        bundle_id=bundle.id,
        args={
            "target": bundle.target,
            "release": bundle.release,
            "split": {"experiment_id": experiment_id, "share": share},
        },
    )


def send_split(
    session: Session, publisher: FleetPublisher, experiment: Experiment, devices: Sequence[str]
) -> None:
    """Send each of ``devices`` its share of arm B (``Experiment.shares``)."""
    assert experiment.id is not None
    bundle = bundle_of(session, experiment.bundle_b)
    rollouts = challenger_rollouts(session, experiment)
    rollout_id = rollouts[-1].id if rollouts else None
    shares = experiment.shares or {}
    for device_id in devices:
        share = float(shares.get(device_id, experiment.share_b))
        publisher.publish_command(
            device_id, split_command(bundle, rollout_id, experiment.id, share)
        )


def deliver_challenger(
    session: Session,
    publisher: FleetPublisher,
    experiment: Experiment,
    devices: Sequence[str],
    actor: str,
) -> int:
    """Deliver arm B beside arm A on ``devices`` (a shadow rollout), then their split."""
    rollout = create_rollout(
        session=session,
        publisher=publisher,
        rollout_in=RolloutCreate(
            bundle_id=experiment.bundle_b,
            device_ids=list(devices),
            strategy="shadow",
            soak_seconds=CHALLENGER_SOAK_S,
        ),
        actor=actor,
    )
    assert rollout.id is not None
    experiment.arm_rollouts = [
        *(experiment.arm_rollouts or []),
        {"arm": "B", "rollout_id": rollout.id, "devices": sorted(devices), "by": "challenger"},
    ]
    send_split(session, publisher, experiment, devices)
    return rollout.id


def drop_challenger(
    session: Session, publisher: FleetPublisher, experiment: Experiment, reason: str
) -> list[int]:
    """End the challenger's shadow rollouts (the devices discard arm B); their ids.

    Commits (``act_on_rollout`` does).
    """
    ended = []
    for rollout in challenger_rollouts(session, experiment):
        if rollout.state not in ("in_progress", "paused"):
            continue
        assert rollout.id is not None
        act_on_rollout(
            session=session,
            publisher=publisher,
            rollout_id=rollout.id,
            action="abort",
            actor="system",
            reason=reason,
        )
        ended.append(rollout.id)
    return ended
