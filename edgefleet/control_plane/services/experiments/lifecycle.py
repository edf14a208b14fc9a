"""An experiment's life: created with one rollout per arm, decided by a scheduled pass,
promoted or stopped, and every decision audited with its numbers.

``ExperimentRunner.tick`` runs on the scheduler like the rollout orchestrator: each
running experiment is advanced in its own transaction holding its row (``SELECT ...
FOR UPDATE SKIP LOCKED`` on PostgreSQL, so one replica advances it at a time). A pass:

The steps of a pass are in ``decision`` (the test, the promotion) and ``bandit``
(moving devices between arms); the arms' delivery in ``arms``.

1. an arm whose latest rollout ended without installing (aborted, failed, rolled
   back by someone else) fails the experiment: there is nothing left to compare;
2. the outcomes are added up per arm (``outcomes``) and the sequential test is run
   on every metric with data (``statistics.msprt``); the primary metric decides;
3. significant: the better arm wins (``experiment.decide``, with the numbers), the
   loser's rollouts are rolled back when the loser is the newer release (devices
   refuse a lower release, so the way back is the rollback to their previous slot),
   and the winner is rolled out by an ordinary rollout to ``promote_to``'s devices
   that do not already run it (``experiment.promote``);
4. otherwise, in bandit mode and once ``reassign_every_s`` has passed, arm B's share
   becomes Thompson sampling's probability that B is better (kept within
   ``min_share``), and the devices at the edge of the hash ranking change arm
   (``experiment.reassign``): moved onto the newer release by a rollout of it, onto the
   older one by a rollback of the newer arm's rollout on those devices.

In ``requests`` and ``requests_bandit`` mode every device of the cohort is on both arms:
arm A by an ordinary rollout (a no-op where it already runs), arm B as a challenger
beside it (``arms.deliver_challenger``) answering ``share_b`` of its requests. Step 4
then sets each device's own share (``bandit.reshare``: Thompson sampling on that
device's outcomes in ``requests_bandit``; the same shares sent again in ``requests``,
so a device that restarted gets its split back), and a stop ends the challenger.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from edgefleet.control_plane.core.errors import (
    ConflictError,
    ControlPlaneError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.control_plane.core.tables import (
    Experiment,
    ExperimentCreate,
    Rollout,
    RolloutCreate,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.experiments.arms import (
    REQUEST_MODES,
    bundle_of,
    claim_experiment,
    deliver_arm,
    deliver_challenger,
    drop_challenger,
    higher_is_better,
    reload_experiment,
    splits_requests,
)
from edgefleet.control_plane.services.experiments.assignment import assign_arms, device_key
from edgefleet.control_plane.services.experiments.bandit import reassign, reshare
from edgefleet.control_plane.services.experiments.decision import evaluate, promote
from edgefleet.control_plane.services.experiments.outcomes import ArmOutcomes, gather_outcomes
from edgefleet.control_plane.services.rollouts.deadlines import aware
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher
from edgefleet.control_plane.services.rollouts.selection import select_devices, wave_sizes
from edgefleet.errors import TransitionError
from edgefleet.states.experiment import next_experiment_state

logger = logging.getLogger(__name__)

ENDED_WITHOUT_INSTALL = frozenset({"aborted", "failed", "rolled_back"})


def create_experiment(
    *,
    session: Session,
    publisher: FleetPublisher,
    experiment_in: ExperimentCreate,
    actor: str = "system",
) -> Experiment:
    """Split the selected devices between the two bundles and offer each arm its bundle.

    Raises:
        NotFoundError: a bundle does not exist.
        InvalidRequestError: the bundles are one and the same, of different models or
            profiles, or the selector finds fewer than two devices.
    """
    bundle_a = bundle_of(session, experiment_in.bundle_a)
    bundle_b = bundle_of(session, experiment_in.bundle_b)
    if bundle_a.id == bundle_b.id:
        raise InvalidRequestError("an experiment needs two different bundles")
    if (bundle_a.model, bundle_a.profile) != (bundle_b.model, bundle_b.profile):
        raise InvalidRequestError(
            f"arms must be one model on one profile: {bundle_a.id} is {bundle_a.model} on "
            f"{bundle_a.profile}, {bundle_b.id} is {bundle_b.model} on {bundle_b.profile}"
        )
    by_requests = experiment_in.mode in REQUEST_MODES
    if by_requests and bundle_b.release <= bundle_a.release:
        raise InvalidRequestError(
            f"in {experiment_in.mode} mode arm B runs beside arm A, so it must be the newer "
            f"release: {bundle_b.id} is release {bundle_b.release}, {bundle_a.id} is "
            f"{bundle_a.release}"
        )
    if by_requests and experiment_in.metric == "accuracy":
        raise InvalidRequestError(
            f"{experiment_in.mode} mode cannot decide on accuracy yet: a device's feedback "
            "labels are counted per model, not per arm"
        )
    devices = select_devices(
        session, bundle_b, RolloutCreate(bundle_id=bundle_b.id, selector=experiment_in.selector)
    )
    if len(devices) < 2:
        raise InvalidRequestError(
            f"an experiment needs at least two devices; the selector found {len(devices)}"
        )
    wave_sizes(experiment_in.promote_waves, len(devices))  # a bad spec is refused now
    experiment = Experiment(
        name=experiment_in.name,
        model=bundle_b.model,
        profile=bundle_b.profile,
        bundle_a=bundle_a.id,
        bundle_b=bundle_b.id,
        mode=experiment_in.mode,
        metric=experiment_in.metric,
        outcome_goal=experiment_in.outcome_goal,
        share_b=experiment_in.share_b,
        min_share=experiment_in.min_share,
        alpha=experiment_in.alpha,
        mixture_sd=experiment_in.mixture_sd,
        min_samples=experiment_in.min_samples,
        reassign_every_s=experiment_in.reassign_every_s,
        selector=experiment_in.selector.model_dump(exclude_none=True),
        promote_to=(
            experiment_in.promote_to.model_dump(exclude_none=True)
            if experiment_in.promote_to
            else None
        ),
        promote_waves=list(experiment_in.promote_waves),
        promote_gates=experiment_in.promote_gates.model_dump(),
        created_by=actor,
    )
    session.add(experiment)
    session.flush()
    assert experiment.id is not None
    if by_requests:  # every device serves both arms, A active and B beside it
        experiment.assignments = {d.id: "AB" for d in devices}
        experiment.shares = {d.id: experiment.share_b for d in devices}
    else:
        experiment.assignments = assign_arms(
            experiment.id, [d.id for d in devices], experiment.share_b
        )
    experiment.reassigned_at = utcnow()
    record_audit(
        session=session,
        actor=actor,
        action="experiment.create",
        target=f"experiment:{experiment.id}",
        detail={
            "bundles": {"A": bundle_a.id, "B": bundle_b.id},
            "metric": experiment.metric,
            "mode": experiment.mode,
            "share_b": experiment.share_b,
            "alpha": experiment.alpha,
            "assignment": {
                d: {"arm": arm, "key": device_key(experiment.id, d)}
                if not by_requests
                else {"arm": arm, "share_b": experiment.share_b}
                for d, arm in sorted(experiment.assignments.items())
            },
        },
    )
    session.commit()  # the arms' rollouts commit on their own; the experiment stands first
    experiment_id = experiment.id
    try:
        if by_requests:
            cohort = sorted(experiment.assignments)
            deliver_arm(session, publisher, experiment, "A", cohort, actor)
            deliver_challenger(session, publisher, experiment, cohort, actor)
        for arm in () if by_requests else ("A", "B"):
            members = sorted(d for d, a in experiment.assignments.items() if a == arm)
            if members:
                deliver_arm(session, publisher, experiment, arm, members, actor)
    except ControlPlaneError as e:
        experiment = reload_experiment(session, experiment_id)
        _end(session, experiment, "arm_failed", f"could not deliver an arm: {e}", actor, {})
        session.commit()
        raise
    session.add(experiment)
    session.commit()
    session.refresh(experiment)
    logger.info(
        "experiment created experiment_id=%d devices=%d share_b=%s",
        experiment_id,
        len(devices),
        experiment.share_b,
    )
    return experiment


def _end(
    session: Session,
    experiment: Experiment,
    trigger: str,
    reason: str,
    actor: str,
    detail: dict[str, Any],
) -> None:
    try:
        experiment.state = next_experiment_state(experiment.state, trigger)
    except TransitionError as e:
        raise ConflictError(
            f"cannot {trigger} experiment {experiment.id}: it is {experiment.state}"
        ) from e
    experiment.reason = reason
    experiment.updated_at = utcnow()
    session.add(experiment)
    record_audit(
        session=session,
        actor=actor,
        action=f"experiment.{'stop' if trigger == 'stop' else 'fail'}",
        target=f"experiment:{experiment.id}",
        reason=reason,
        detail=detail | {"results": experiment.results},
    )


def stop_experiment(
    *,
    session: Session,
    experiment_id: int,
    actor: str,
    reason: str | None = None,
    publisher: FleetPublisher | None = None,
) -> Experiment:
    """Stop a running experiment without a decision; each device keeps the arm it runs.

    In ``requests`` mode the devices keep arm A, their active model: the challenger's
    shadow rollout ends (through ``publisher``) and the devices discard arm B.

    Raises:
        NotFoundError: no such experiment.
        ConflictError: it is not running.
    """
    experiment = claim_experiment(session, experiment_id, skip_locked=False)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    _end(session, experiment, "stop", reason or f"stopped by {actor}", actor, {})
    session.commit()
    if publisher is not None and splits_requests(experiment):
        drop_challenger(
            session, publisher, experiment, f"experiment {experiment_id} stopped by {actor}"
        )
    session.refresh(experiment)
    return experiment


def _failed_arm(session: Session, experiment: Experiment) -> str | None:
    """Why an arm can no longer be compared (its latest rollout ended without installing)."""
    latest: dict[str, int] = {}
    for entry in experiment.arm_rollouts or []:
        if entry.get("rollout_id") is not None:  # a bandit move by rollback has none
            latest[str(entry["arm"])] = int(entry["rollout_id"])
    for arm, rollout_id in sorted(latest.items()):
        rollout = session.get(Rollout, rollout_id)
        if rollout is not None and rollout.state in ENDED_WITHOUT_INSTALL:
            return f"arm {arm}'s rollout {rollout_id} is {rollout.state}: {rollout.reason or ''}"
    return None


def advance_experiment(
    *, session: Session, publisher: FleetPublisher, experiment: Experiment, actor: str = "system"
) -> None:
    """One pass over a running experiment (see the module docstring); the caller commits."""
    failure = _failed_arm(session, experiment)
    if failure is not None:
        _end(session, experiment, "arm_failed", failure, actor, {})
        return
    by_device: dict[str, dict[str, ArmOutcomes]] = {}
    arms = gather_outcomes(
        session=session,
        experiment=experiment,
        by_device=by_device if experiment.mode == "requests_bandit" else None,
    )
    experiment.results = evaluate(experiment, arms)
    experiment.passes += 1
    experiment.updated_at = utcnow()
    session.add(experiment)
    primary = experiment.results.get(experiment.metric)
    if primary is not None and primary["significant"]:
        b_higher = primary["mean_b"] > primary["mean_a"]
        winner = "B" if b_higher == higher_is_better(experiment) else "A"
        promote(session=session, publisher=publisher, experiment=experiment, winner=winner)
        return
    due = experiment.reassigned_at is None or utcnow() - aware(
        experiment.reassigned_at
    ) >= timedelta(seconds=experiment.reassign_every_s)
    if not due:
        return
    if experiment.mode == "bandit":
        reassign(session=session, publisher=publisher, experiment=experiment, arms=arms)
    elif splits_requests(experiment):
        reshare(
            session=session,
            publisher=publisher,
            experiment=experiment,
            by_device=by_device,
            bandit=experiment.mode == "requests_bandit",
        )


class ExperimentRunner:
    """The scheduled pass over every running experiment (``jobs.scheduler``)."""

    def __init__(self, *, engine: Engine, publisher: FleetPublisher) -> None:
        self.engine = engine
        self.publisher = publisher

    def tick(self) -> None:
        """Advance each running experiment once, each in its own transaction."""
        try:
            with Session(self.engine) as session:
                ids = session.exec(select(Experiment.id).where(Experiment.state == "running")).all()
            for experiment_id in ids:
                assert experiment_id is not None
                self._advance_one(experiment_id)
        except Exception:  # top of a scheduled job
            logger.exception("experiment pass failed")

    def _advance_one(self, experiment_id: int) -> None:
        with Session(self.engine) as session:
            try:
                experiment = claim_experiment(session, experiment_id, skip_locked=True)
                if experiment is None or experiment.state != "running":
                    session.rollback()
                    return
                advance_experiment(session=session, publisher=self.publisher, experiment=experiment)
                session.commit()
            except ControlPlaneError as e:  # a promotion the rollouts refused, say
                session.rollback()
                logger.warning(
                    "experiment pass refused experiment_id=%d reason=%s", experiment_id, e
                )
