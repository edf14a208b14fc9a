"""An experiment's life: created with one rollout per arm, decided by a scheduled pass,
promoted or stopped, and every decision audited with its numbers.

``ExperimentRunner.tick`` runs on the scheduler like the rollout orchestrator: each
running experiment is advanced in its own transaction holding its row (``SELECT ...
FOR UPDATE SKIP LOCKED`` on PostgreSQL, so one replica advances it at a time). A pass:

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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import (
    ConflictError,
    ControlPlaneError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.control_plane.core.tables import (
    Bundle,
    Experiment,
    ExperimentCreate,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    RolloutGates,
    RolloutSelector,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.experiments.assignment import assign_arms, device_key
from edgefleet.control_plane.services.experiments.outcomes import (
    METRICS,
    PROPORTIONS,
    ArmOutcomes,
    gather_outcomes,
)
from edgefleet.control_plane.services.experiments.statistics import (
    msprt,
    probability_b_better,
)
from edgefleet.control_plane.services.rollouts.deadlines import aware
from edgefleet.control_plane.services.rollouts.lifecycle import act_on_rollout, create_rollout
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher
from edgefleet.control_plane.services.rollouts.selection import select_devices
from edgefleet.control_plane.services.rollouts.waves import send_rollback
from edgefleet.errors import TransitionError
from edgefleet.states.experiment import next_experiment_state

logger = logging.getLogger(__name__)

ENDED_WITHOUT_INSTALL = frozenset({"aborted", "failed", "rolled_back"})
LOWER_IS_BETTER = frozenset({"error_rate", "latency_ms"})


def higher_is_better(experiment: Experiment) -> bool:
    """Whether a larger value of the experiment's metric is the better one."""
    if experiment.metric == "outcome":
        return experiment.outcome_goal == "maximize"
    return experiment.metric not in LOWER_IS_BETTER


def _bundle(session: Session, bundle_id: str) -> Bundle:
    bundle = session.get(Bundle, bundle_id)
    if bundle is None:
        raise NotFoundError(f"bundle {bundle_id} not found")
    return bundle


def _arm_bundle(experiment: Experiment, arm: str) -> str:
    return experiment.bundle_a if arm == "A" else experiment.bundle_b


def _deliver(
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
        rollout_in=RolloutCreate(bundle_id=_arm_bundle(experiment, arm), device_ids=list(devices)),
        actor=actor,
    )
    assert rollout.id is not None
    experiment.arm_rollouts = [
        *(experiment.arm_rollouts or []),
        {"arm": arm, "rollout_id": rollout.id, "devices": sorted(devices)},
    ]
    return rollout.id


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
    bundle_a = _bundle(session, experiment_in.bundle_a)
    bundle_b = _bundle(session, experiment_in.bundle_b)
    if bundle_a.id == bundle_b.id:
        raise InvalidRequestError("an experiment needs two different bundles")
    if (bundle_a.model, bundle_a.profile) != (bundle_b.model, bundle_b.profile):
        raise InvalidRequestError(
            f"arms must be one model on one profile: {bundle_a.id} is {bundle_a.model} on "
            f"{bundle_a.profile}, {bundle_b.id} is {bundle_b.model} on {bundle_b.profile}"
        )
    devices = select_devices(
        session, bundle_b, RolloutCreate(bundle_id=bundle_b.id, selector=experiment_in.selector)
    )
    if len(devices) < 2:
        raise InvalidRequestError(
            f"an experiment needs at least two devices; the selector found {len(devices)}"
        )
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
    experiment.assignments = assign_arms(experiment.id, [d.id for d in devices], experiment.share_b)
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
                for d, arm in sorted(experiment.assignments.items())
            },
        },
    )
    session.commit()  # the arms' rollouts commit on their own; the experiment stands first
    experiment_id = experiment.id
    try:
        for arm in ("A", "B"):
            members = sorted(d for d, a in experiment.assignments.items() if a == arm)
            if members:
                _deliver(session, publisher, experiment, arm, members, actor)
    except ControlPlaneError as e:
        experiment = _reload(session, experiment_id)
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


def _reload(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id, populate_existing=True)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
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
    *, session: Session, experiment_id: int, actor: str, reason: str | None = None
) -> Experiment:
    """Stop a running experiment without a decision; each device keeps the arm it runs.

    Raises:
        NotFoundError: no such experiment.
        ConflictError: it is not running.
    """
    experiment = _claim(session, experiment_id, skip_locked=False)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    _end(session, experiment, "stop", reason or f"stopped by {actor}", actor, {})
    session.commit()
    session.refresh(experiment)
    return experiment


def _claim(session: Session, experiment_id: int, *, skip_locked: bool) -> Experiment | None:
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


def evaluate(experiment: Experiment, arms: dict[str, ArmOutcomes]) -> dict[str, Any]:
    """The test on every metric with observations on both arms, keyed by metric.

    Each entry is ``SequentialResult.as_dict()`` plus the devices that reported and the
    running minimum of the always-valid p-value over the experiment's passes.
    """
    previous = experiment.results or {}
    results: dict[str, Any] = {}
    for metric in METRICS:
        a, b = arms["A"].summary(metric), arms["B"].summary(metric)
        if a.n == 0 and b.n == 0:
            continue
        result = msprt(
            a,
            b,
            alpha=experiment.alpha,
            mixture_sd=experiment.mixture_sd,
            min_samples=experiment.min_samples,
            pooled=metric in PROPORTIONS,
        )
        verdict: dict[str, Any] = dict(result.as_dict())
        earlier = previous.get(metric, {}).get("p_value_min", 1.0)
        verdict["p_value_min"] = min(float(verdict["p_value"]), float(earlier))
        verdict["devices"] = {"A": len(arms["A"].devices), "B": len(arms["B"].devices)}
        results[metric] = verdict
    return results


def _failed_arm(session: Session, experiment: Experiment) -> str | None:
    """Why an arm can no longer be compared (its latest rollout ended without installing)."""
    latest: dict[str, int] = {}
    for entry in experiment.arm_rollouts or []:
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
    arms = gather_outcomes(session=session, experiment=experiment)
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
    if experiment.mode == "bandit":
        due = experiment.reassigned_at is None or utcnow() - aware(
            experiment.reassigned_at
        ) >= timedelta(seconds=experiment.reassign_every_s)
        if due:
            reassign(session=session, publisher=publisher, experiment=experiment, arms=arms)


def promote(
    *, session: Session, publisher: FleetPublisher, experiment: Experiment, winner: str
) -> None:
    """Decide for ``winner``: audit the numbers, roll the newer loser back, roll the winner out.

    Commits (the rollback and the promotion rollout commit on their own).
    """
    loser = "B" if winner == "A" else "A"
    win_bundle = _bundle(session, _arm_bundle(experiment, winner))
    lose_bundle = _bundle(session, _arm_bundle(experiment, loser))
    experiment.state = next_experiment_state(experiment.state, "decided")
    experiment.winner = winner
    experiment.decided_at = utcnow()
    experiment.reason = (
        f"arm {winner} ({win_bundle.id}) better on {experiment.metric}: "
        f"{_numbers(experiment.results[experiment.metric])}"
    )
    record_audit(
        session=session,
        actor="system",
        action="experiment.decide",
        target=f"experiment:{experiment.id}",
        reason=experiment.reason,
        detail={"winner": winner, "bundle": win_bundle.id, "results": experiment.results},
    )
    session.add(experiment)
    session.commit()
    experiment_id = experiment.id
    assert experiment_id is not None
    arm_devices = {
        arm: {d for d, a in (experiment.assignments or {}).items() if a == arm} for arm in "AB"
    }
    rolled_back: list[int] = []
    if lose_bundle.release > win_bundle.release:
        for entry in experiment.arm_rollouts or []:
            if entry["arm"] != loser:
                continue
            rollout = session.get(Rollout, int(entry["rollout_id"]))
            if rollout is None or rollout.state == "rolled_back":
                continue
            act_on_rollout(
                session=session,
                publisher=publisher,
                rollout_id=int(entry["rollout_id"]),
                action="rollback",
                actor="system",
                reason=f"experiment {experiment_id}: arm {loser} lost ({experiment.reason})",
            )
            rolled_back.append(int(entry["rollout_id"]))
        skip = arm_devices[winner] | arm_devices[loser]  # the losers roll back to their previous
    else:
        skip = arm_devices[winner]  # the losers are offered the newer winner below
    experiment = _reload(session, experiment_id)
    # Default: every device of the profile (a rollout is always narrowed to it).
    selector = RolloutSelector.model_validate(experiment.promote_to or {})
    detail: dict[str, Any] = {"winner": winner, "rolled_back_rollouts": rolled_back}
    try:
        candidates = select_devices(
            session, win_bundle, RolloutCreate(bundle_id=win_bundle.id, selector=selector)
        )
        targets = [d.id for d in candidates if d.id not in skip]
        if targets:
            rollout = create_rollout(
                session=session,
                publisher=publisher,
                rollout_in=RolloutCreate(
                    bundle_id=win_bundle.id,
                    device_ids=targets,
                    waves=list(experiment.promote_waves or ["100%"]),
                    gates=RolloutGates.model_validate(experiment.promote_gates or {}),
                ),
                actor="system",
            )
            detail |= {"rollout_id": rollout.id, "devices": len(targets)}
        else:
            detail |= {"rollout_id": None, "devices": 0, "note": "no device left to promote to"}
    except ControlPlaneError as e:  # a vanished group, say: the decision stands, say why
        session.rollback()
        detail |= {"rollout_id": None, "error": str(e)}
    experiment = _reload(session, experiment_id)
    experiment.promotion_rollout_id = detail.get("rollout_id")
    record_audit(
        session=session,
        actor="system",
        action="experiment.promote",
        target=f"experiment:{experiment_id}",
        reason=f"{win_bundle.id} wins experiment {experiment_id}",
        detail=detail,
    )
    session.add(experiment)
    session.commit()
    logger.info(
        "experiment decided experiment_id=%d winner=%s promotion_rollout=%s",
        experiment_id,
        winner,
        experiment.promotion_rollout_id,
    )


def _numbers(result: dict[str, Any]) -> str:
    return (
        f"A {result['mean_a']:.4g} (n={result['n_a']:g}) vs B {result['mean_b']:.4g} "
        f"(n={result['n_b']:g}), likelihood ratio {result['likelihood_ratio']:.3g} "
        f">= 1/alpha = {1 / result['alpha']:.3g}"
    )


def reassign(
    *,
    session: Session,
    publisher: FleetPublisher,
    experiment: Experiment,
    arms: dict[str, ArmOutcomes],
) -> None:
    """Bandit mode: move arm B's share to Thompson sampling's P(B better) and move devices.

    Commits.
    """
    assert experiment.id is not None
    metric = experiment.metric
    p_b = probability_b_better(
        arms["A"].summary(metric),
        arms["B"].summary(metric),
        higher_is_better=higher_is_better(experiment),
        proportion=metric in PROPORTIONS,
        seed=experiment.id * 1_000_003 + experiment.passes,
    )
    share = min(max(p_b, experiment.min_share), 1.0 - experiment.min_share)
    before = dict(experiment.assignments or {})
    after = assign_arms(experiment.id, before, share)
    moved = {d: after[d] for d in before if before[d] != after[d]}
    experiment.share_b = share
    experiment.assignments = after
    experiment.reassigned_at = utcnow()
    record_audit(
        session=session,
        actor="system",
        action="experiment.reassign",
        target=f"experiment:{experiment.id}",
        reason=f"P(B better on {metric}) = {p_b:.3f}: arm B's share is now {share:.3f}",
        detail={"p_b_better": p_b, "share_b": share, "moved": moved, "results": experiment.results},
    )
    session.add(experiment)
    session.commit()
    if not moved:
        return
    releases = {arm: _bundle(session, _arm_bundle(experiment, arm)).release for arm in "AB"}
    newer = "B" if releases["B"] > releases["A"] else "A"
    older = "A" if newer == "B" else "B"
    to_newer = sorted(d for d, arm in moved.items() if arm == newer)
    to_older = sorted(d for d, arm in moved.items() if arm == older)
    experiment_id = experiment.id
    if to_newer:
        _deliver(session, publisher, experiment, newer, to_newer, "system")
    if to_older:
        _roll_back_devices(session, publisher, experiment, newer, to_older)
        experiment = _reload(session, experiment_id)
        experiment.arm_rollouts = [
            *(experiment.arm_rollouts or []),
            {"arm": older, "rollout_id": None, "devices": to_older, "by": "rollback"},
        ]
    session.add(experiment)
    session.commit()


def _roll_back_devices(
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
                experiment = _claim(session, experiment_id, skip_locked=True)
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
