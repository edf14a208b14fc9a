"""Reading experiments: the API's, the CLI's and the console's view of one."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.tables import Experiment, ExperimentArmPublic, ExperimentPublic


def list_experiments(*, session: Session) -> Sequence[Experiment]:
    """Every experiment, oldest first."""
    return session.exec(select(Experiment).order_by(col(Experiment.id))).all()


def get_experiment(*, session: Session, experiment_id: int) -> Experiment:
    """The experiment ``experiment_id``.

    Raises:
        NotFoundError: no such experiment.
    """
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return experiment


def experiment_public(experiment: Experiment) -> ExperimentPublic:
    """The API view: each arm with its bundle, devices and rollouts, and the latest numbers."""
    assert experiment.id is not None
    arms = []
    for arm, bundle in (("A", experiment.bundle_a), ("B", experiment.bundle_b)):
        rollout_ids = [
            int(e["rollout_id"])
            for e in experiment.arm_rollouts or []
            if e["arm"] == arm and e.get("rollout_id") is not None
        ]
        # "AB": in requests mode a device serves both arms
        devices = sorted(d for d, a in (experiment.assignments or {}).items() if arm in a)
        arms.append(
            ExperimentArmPublic(arm=arm, bundle_id=bundle, devices=devices, rollout_ids=rollout_ids)
        )
    return ExperimentPublic(
        id=experiment.id,
        name=experiment.name,
        model=experiment.model,
        profile=experiment.profile,
        state=experiment.state,
        mode=experiment.mode,
        metric=experiment.metric,
        outcome_goal=experiment.outcome_goal,
        share_b=experiment.share_b,
        shares=experiment.shares or {},
        alpha=experiment.alpha,
        arms=arms,
        results=experiment.results or {},
        winner=experiment.winner,
        promotion_rollout_id=experiment.promotion_rollout_id,
        reason=experiment.reason,
        created_by=experiment.created_by,
        started_at=experiment.started_at,
        decided_at=experiment.decided_at,
        updated_at=experiment.updated_at,
    )
