"""Bandit mode: Thompson sampling moves arm B's share toward the better arm.

Arm B's share becomes the posterior probability that B is better on the deciding metric
(``statistics.probability_b_better``), kept within ``[min_share, 1 - min_share]`` so
both arms keep evidence coming. The hash ranking (``assignment``) then moves only the
devices at its edge: onto the newer release by a rollout of it, onto the older one by
a rollback of the newer arm's rollouts on those devices (``arms``). Each move is
audited (``experiment.reassign``) with the probability, the share and who moved.

In ``requests`` mode no device moves: every device serves both arms, and its own share
of requests for arm B becomes the probability that B is better *on that device's*
outcomes (``reshare``), within the same bounds, sent to it as a new split
(``arms.send_split``) and audited (``experiment.reshare``) with every device's numbers.
"""

from __future__ import annotations

from sqlmodel import Session

from edgefleet.control_plane.core.tables import Experiment, utcnow
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.experiments.arms import (
    arm_bundle,
    bundle_of,
    deliver_arm,
    higher_is_better,
    reload_experiment,
    roll_back_arm,
    send_split,
)
from edgefleet.control_plane.services.experiments.assignment import assign_arms
from edgefleet.control_plane.services.experiments.outcomes import PROPORTIONS, ArmOutcomes
from edgefleet.control_plane.services.experiments.statistics import probability_b_better
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher


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
    releases = {arm: bundle_of(session, arm_bundle(experiment, arm)).release for arm in "AB"}
    newer = "B" if releases["B"] > releases["A"] else "A"
    older = "A" if newer == "B" else "B"
    to_newer = sorted(d for d, arm in moved.items() if arm == newer)
    to_older = sorted(d for d, arm in moved.items() if arm == older)
    experiment_id = experiment.id
    if to_newer:
        deliver_arm(session, publisher, experiment, newer, to_newer, "system")
    if to_older:
        roll_back_arm(session, publisher, experiment, newer, to_older)
        experiment = reload_experiment(session, experiment_id)
        experiment.arm_rollouts = [
            *(experiment.arm_rollouts or []),
            {"arm": older, "rollout_id": None, "devices": to_older, "by": "rollback"},
        ]
    session.add(experiment)
    session.commit()


def reshare(
    *,
    session: Session,
    publisher: FleetPublisher,
    experiment: Experiment,
    by_device: dict[str, dict[str, ArmOutcomes]],
    bandit: bool,
) -> None:
    """``requests`` mode: set and send each device's share of arm B's requests.

    With ``bandit``, each device's share becomes Thompson sampling's P(B better) on its
    own outcomes, kept within ``[min_share, 1 - min_share]``; without, the shares stay
    and are only sent again (a device that restarted gets its split back). Commits.
    """
    assert experiment.id is not None
    metric = experiment.metric
    shares = dict(experiment.shares or {})
    detail: dict[str, dict[str, float]] = {}
    if bandit:
        for number, device_id in enumerate(sorted(experiment.assignments or {})):
            own = by_device.get(device_id)
            if own is None:
                continue  # nothing reported yet: its share stays
            p_b = probability_b_better(
                own["A"].summary(metric),
                own["B"].summary(metric),
                higher_is_better=higher_is_better(experiment),
                proportion=metric in PROPORTIONS,
                seed=(experiment.id * 1_000_003 + experiment.passes) * 1_009 + number,
            )
            share = min(max(p_b, experiment.min_share), 1.0 - experiment.min_share)
            shares[device_id] = share
            detail[device_id] = {
                "p_b_better": p_b,
                "share_b": share,
                "n_a": own["A"].summary(metric).n,
                "n_b": own["B"].summary(metric).n,
            }
        experiment.shares = shares
        record_audit(
            session=session,
            actor="system",
            action="experiment.reshare",
            target=f"experiment:{experiment.id}",
            reason=f"arm B's share of each device's requests follows P(B better on {metric})",
            detail={"devices": detail, "results": experiment.results},
        )
    experiment.reassigned_at = utcnow()
    session.add(experiment)
    session.commit()
    send_split(session, publisher, experiment, sorted(experiment.assignments or {}))
