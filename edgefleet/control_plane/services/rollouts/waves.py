"""A rollout's waves: offering one, rolling rows back, ending the rollout, judging a wave.

Shared by the operator actions (``lifecycle``), the orchestrator's passes
(``orchestrator``) and the API view (``views``). ``wave_verdict`` gathers a wave's
numbers from the database; ``gates`` does the arithmetic on them.

Device install states, as the rollout table groups them, are the shared contract's
(``edgefleet.states.install``). Starting a wave arms its deadlines (``deadlines``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import (
    Bundle,
    Rollout,
    RolloutDevice,
    RolloutGates,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.event_aggregates import read_wave_telemetry
from edgefleet.control_plane.services.rollouts.deadlines import arm_deadlines, aware
from edgefleet.control_plane.services.rollouts.gates import GateInputs, GateVerdict, evaluate_gates
from edgefleet.control_plane.services.rollouts.outbox import (
    FleetPublisher,
    Outbox,
    device_offer,
    shadow_start,
)
from edgefleet.control_plane.services.rollouts.pacing import is_paced, offer_queued
from edgefleet.messages import DeviceCommand
from edgefleet.states.install import (
    FINISHED_STATES,
    GATE_FAILED_STATES,
    INSTALLING_STATES,
    TIMED_OUT,
)

__all__ = ["aware", "end_rollout", "send_rollback", "start_wave", "wave_rows", "wave_verdict"]


def wave_rows(session: Session, rollout: Rollout, wave: int | None = None) -> list[RolloutDevice]:
    """The rollout's device rows (of wave ``wave`` only, when given), by device id."""
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id)
    if wave is not None:
        query = query.where(RolloutDevice.wave == wave)
    return list(session.exec(query.order_by(col(RolloutDevice.device_id))).all())


def start_wave(*, session: Session, rollout: Rollout, wave: int, actor: str) -> Outbox:
    """Move wave ``wave`` (0-based) to offered; the caller commits and sends the outbox.

    Pending rows become ``offered`` (``shadowing`` for the shadow strategy) and the
    rollout's phase starts over at ``installing``; the rollout's state is the caller's.

    Returns:
        The offers (or shadow_start commands) owed to the wave's devices.
    """
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None and rollout.id is not None
    now = utcnow()
    rollout.current_wave = wave
    rollout.phase = "installing"
    rollout.wave_started_at = now
    rollout.wave_deadline_at = wave_deadline = now + timedelta(seconds=rollout.wave_timeout_s)
    rollout.soak_started_at = None
    rollout.promoted = False
    rollout.updated_at = now
    session.add(rollout)
    wave_all = wave_rows(session, rollout, wave)
    rows = [r for r in wave_all if r.state == "pending"]
    paced = is_paced(rollout) and rollout.strategy != "shadow"
    for row in [] if paced else rows:
        row.state = "shadowing" if rollout.strategy == "shadow" else "offered"
        if row.state == "offered":
            arm_deadlines(row, rollout, now, wave_deadline)
        else:
            row.offered_at = now
        row.updated_at = now
        session.add(row)
    record_audit(
        session=session,
        actor=actor,
        action="rollout.wave_start",
        rollout_id=rollout.id,
        reason=f"wave {wave + 1} of {len(rollout.wave_sizes)}",
        detail={"wave": wave + 1, "device_ids": [r.device_id for r in rows]}
        | ({"max_concurrent": rollout.max_concurrent,
            "bandwidth_bytes_per_s": rollout.bandwidth_bytes_per_s} if paced else {}),
    )  # fmt: skip
    session.flush()
    if paced:  # offered in steps, see ``pacing``
        return offer_queued(session=session, rollout=rollout, rows=wave_all, now=now, actor=actor)
    outbox: Outbox = []
    for row in rows:
        message = shadow_start(bundle, rollout) if rollout.strategy == "shadow" else None
        outbox.append((row.device_id, message or device_offer(session, bundle, rollout,
                                                              row.device_id)))  # fmt: skip
    return outbox


def send_rollback(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout: Rollout,
    rows: Sequence[RolloutDevice],
    reason: str,
) -> list[str]:
    """Roll back (or stop shadowing on) the rows that got the bundle; cancel pending ones.

    Commands are published at once, before the caller commits (not through an
    outbox). A timed-out device gets the rollback command too (it may still be
    installing) but its row stays ``timed_out``, keeping the verdict's record. Rows in
    any other state (failed, rolled back, superseded, cancelled) are left alone.

    Returns:
        The devices a rollback or shadow_stop command was sent to.
    """
    now = utcnow()
    sent: list[str] = []

    def command(row: RolloutDevice, name: Literal["rollback", "shadow_stop"]) -> None:
        publisher.publish_command(
            row.device_id,
            DeviceCommand(
                command=name, rollout_id=rollout.id, bundle_id=rollout.bundle_id, reason=reason
            ),
        )
        sent.append(row.device_id)

    for row in rows:
        if row.state == "pending":
            row.state = "cancelled"
        elif row.state == "shadowing":
            command(row, "shadow_stop")
            row.state = "cancelled"
        elif rollout.atomic is not None and row.state in INSTALLING_STATES:
            # Staged or armed for an atomic switch: drop the staged bundle. A rollback
            # would roll back what the device serves now, which this rollout never touched.
            publisher.publish_command(
                row.device_id,
                DeviceCommand(
                    command="drop_staged",
                    rollout_id=rollout.id,
                    bundle_id=rollout.bundle_id,
                    reason=reason,
                ),
            )
            sent.append(row.device_id)
            row.state = "rolling_back"
        elif row.state in INSTALLING_STATES or row.state in ("active", "rolling_back"):
            command(row, "rollback")
            row.state = "rolling_back"
        elif row.state == TIMED_OUT:
            command(row, "rollback")  # the row keeps its verdict
            continue
        else:
            continue
        row.reason = reason
        row.updated_at = now
        session.add(row)
    return sent


def end_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout: Rollout,
    state: str,
    reason: str | None,
    actor: str,
    action: str,
    rollback_all: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    """Abort or roll back: the current wave (or every wave) rolls back, later waves cancel.

    Args:
        session: the caller's session; the caller commits.
        publisher: sends the rollback commands (at once, see ``send_rollback``).
        rollout: a rollout already claimed by the caller.
        state: the state the transition table gives for the caller's trigger
            (``aborted`` or ``rolled_back``).
        reason: why, for the audit log and the devices; ``action`` when None.
        actor: who, for the audit log.
        action: the audit action (``rollout.abort``, ``rollout.rollback``).
        rollback_all: roll every wave back, not only the current one.
        detail: extra audit detail (the gate values of a breach).
    """
    rows = wave_rows(session, rollout)
    to_roll_back = [r for r in rows if rollback_all or r.wave == rollout.current_wave]
    to_cancel = [r for r in rows if r not in to_roll_back and r.state == "pending"]
    text = reason or action
    sent = send_rollback(
        session=session, publisher=publisher, rollout=rollout, rows=to_roll_back, reason=text
    )
    send_rollback(
        session=session, publisher=publisher, rollout=rollout, rows=to_cancel, reason=text
    )
    rollout.state = state
    rollout.phase = "done"
    rollout.reason = text
    rollout.updated_at = utcnow()
    session.add(rollout)
    record_audit(
        session=session,
        actor=actor,
        action=action,
        rollout_id=rollout.id,
        reason=text,
        detail=(detail or {}) | {"rolled_back": sent, "wave": rollout.current_wave + 1},
    )


def wave_verdict(
    session: Session, rollout: Rollout, wave: int, *, now: datetime | None = None
) -> GateVerdict:
    """Gate values for wave ``wave`` at ``now``, from its rows and its telemetry since it started.

    While the wave soaks, the time since the soak began decides how long the gates
    may still wait for evidence (``gates``).
    """
    rows = wave_rows(session, rollout)
    running = {r.device_id for r in rows if r.wave == wave and r.state in ("active", "shadowing")}
    reporting: set[str] = set()
    finished = [r for r in rows if r.wave == wave and r.state in FINISHED_STATES | {"rolling_back"}]
    failed = [r for r in finished if r.state in GATE_FAILED_STATES | {"rolling_back"}]
    gates = RolloutGates.model_validate(rollout.gates or {})
    since = aware(rollout.wave_started_at or rollout.created_at)
    everyone = [r.device_id for r in rows]
    candidate: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    shadow: list[dict[str, Any]] = []
    needs_events = any(
        v is not None
        for v in (gates.max_error_rate, gates.max_p95_latency_ratio, gates.min_agreement)
    ) or (gates.min_inferences > 0)
    if needs_events and everyone:
        # Per-minute sums kept at ingest (``event_aggregates``), not a scan of raw events.
        telemetry = read_wave_telemetry(session=session, rollout=rollout, wave=wave, since=since)
        candidate, baseline, shadow = telemetry.candidate, telemetry.baseline, telemetry.shadow
        reporting = telemetry.reporters
    if rollout.strategy == "shadow":
        # The candidate only runs beside the active model: judge its shadow windows,
        # against the active model's own inference windows on the same devices.
        baseline = baseline + candidate
        candidate = [
            {
                "count": s.get("count", 0),
                "errors": 0,
                "latency_ms": s.get("latency_ms") or {},
                "window_s": s.get("window_s"),
            }
            for s in shadow
        ]
    soaking = rollout.phase == "soaking" and rollout.current_wave == wave
    elapsed = None
    if soaking and rollout.soak_started_at is not None:
        elapsed = ((now or utcnow()) - aware(rollout.soak_started_at)).total_seconds()
    return evaluate_gates(
        gates=gates,
        inputs=GateInputs(
            finished=len(finished),
            failed=len(failed),
            candidate=candidate,
            baseline=baseline,
            shadow=shadow,
            members=len(running),
            reporting=len(reporting & running),
            soak_elapsed_s=elapsed,
            soak_s=rollout.soak_seconds,
        ),
    )
