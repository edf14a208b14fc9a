"""An experiment's arms: which bundle each is, and how devices reach it.

A device reaches an arm through the ordinary rollout path: a rollout of the arm's bundle
to it (``deliver_arm``), or, to go back from the newer release to the older one (which a
device would refuse as an offer), a rollback command through the rollouts that delivered
the newer one (``roll_back_arm``). Every rollout an arm used is kept in
``Experiment.arm_rollouts``.
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
from edgefleet.control_plane.services.rollouts.lifecycle import create_rollout
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher
from edgefleet.control_plane.services.rollouts.waves import send_rollback

LOWER_IS_BETTER = frozenset({"error_rate", "latency_ms"})


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
