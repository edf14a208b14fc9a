"""Deciding an experiment: the test on every metric, and promoting the winner.

``evaluate`` runs the sequential test (``statistics.msprt``) on each metric with data;
``promote`` acts on a significant primary metric: it records the decision with its
numbers (``experiment.decide``), rolls the loser's rollouts back when the loser is the
newer release (devices refuse a lower release, so the way back is their previous slot),
and rolls the winner out to ``promote_to``'s devices that do not run it yet by an
ordinary rollout (``experiment.promote``).

In ``requests`` mode every device of the cohort runs arm A with arm B beside it: the
decision ends B's shadow rollout (the devices discard the challenger), and when B won,
the winner's ordinary rollout includes the cohort, whose devices then switch to B
through the usual install path (verified, staged, smoke-tested, probation).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from edgefleet.control_plane.core.errors import ControlPlaneError
from edgefleet.control_plane.core.tables import (
    Experiment,
    Rollout,
    RolloutCreate,
    RolloutGates,
    RolloutSelector,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.experiments.arms import (
    arm_bundle,
    bundle_of,
    drop_challenger,
    reload_experiment,
    splits_requests,
)
from edgefleet.control_plane.services.experiments.outcomes import (
    METRICS,
    PROPORTIONS,
    ArmOutcomes,
)
from edgefleet.control_plane.services.experiments.statistics import msprt
from edgefleet.control_plane.services.rollouts.lifecycle import act_on_rollout, create_rollout
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher
from edgefleet.control_plane.services.rollouts.selection import select_devices
from edgefleet.states.experiment import next_experiment_state

logger = logging.getLogger(__name__)


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


def promote(
    *, session: Session, publisher: FleetPublisher, experiment: Experiment, winner: str
) -> None:
    """Decide for ``winner``: audit the numbers, roll the newer loser back, roll the winner out.

    Commits (the rollback and the promotion rollout commit on their own).
    """
    loser = "B" if winner == "A" else "A"
    win_bundle = bundle_of(session, arm_bundle(experiment, winner))
    lose_bundle = bundle_of(session, arm_bundle(experiment, loser))
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
    ended: list[int] = []
    if splits_requests(experiment):
        # Every device of the cohort runs A with B beside it: the challenger goes
        # (B's shadow rollout ends), and a B win switches the cohort to B below.
        ended = drop_challenger(
            session,
            publisher,
            experiment,
            reason=f"experiment {experiment_id}: decided for arm {winner} ({experiment.reason})",
        )
        cohort = set(experiment.assignments or {})
        skip = cohort if winner == "A" else set()
    elif lose_bundle.release > win_bundle.release:
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
    experiment = reload_experiment(session, experiment_id)
    # Default: every device of the profile (a rollout is always narrowed to it).
    selector = RolloutSelector.model_validate(experiment.promote_to or {})
    detail: dict[str, Any] = {"winner": winner, "rolled_back_rollouts": rolled_back}
    if ended:
        detail["ended_challenger_rollouts"] = ended
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
    experiment = reload_experiment(session, experiment_id)
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
