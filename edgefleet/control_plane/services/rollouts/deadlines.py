"""Every wait bounded: each device's install deadline, each wave's, and time-outs.

The rule, for every device offered a bundle (``RolloutDevice``):

* **Install deadline.** From the offer, a device has ``Rollout.install_timeout_s`` of
  *online* time to report ``active`` (or to fail). Its clock stands still while the
  device is offline (its retained status says so, or its last will did): the clock
  is paused when the control plane sees it offline and, when the device comes back,
  the deadline moves on by the time it was away, so the remaining time continues (a
  fresh deadline on every return would let a flapping device wait for ever).
* **Wave deadline.** A wave's installs end ``Rollout.wave_timeout_s`` after the wave
  started, wall clock, paused by nothing. It caps the install clocks of the wave's
  devices, however long they were offline.
* **Time-out.** A device that is online past either deadline, still short of
  ``active``, is marked ``timed_out``; the row keeps the state it last reported in
  ``timed_out_in``. It counts as failed for the install-failure gate and is offered
  again only by an operator's ``retry`` (``lifecycle``), which gives it fresh deadlines.
* **Offline devices are never timed out while offline.** They do not hold their wave
  up either (the orchestrator judges a wave on its online devices). When one comes
  back it is timed out at once if its wave's deadline has passed (it is not offered
  again); otherwise it is re-offered and its remaining time runs.
* **A report after the time-out** (the device finished after all) is recorded in
  ``late_state`` and in the audit log (``rollout.late_report``) but does not change the
  row's state or the verdict already given: an operator who wants it counted retries
  the device, and a device already running the bundle answers the new offer
  ``active`` at once.

The orchestrator applies the rule on every pass of an ``in_progress`` rollout
(``enforce_deadlines``); a paused rollout times nobody out until it is resumed. The
other phases carry their own clocks: a soak ends after ``soak_seconds`` plus the gates'
``evidence_wait_s``. What waits without a clock is an operator (a paused rollout, a
manual wave awaiting ``promote``) and a device that is offline.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import Device, Rollout, RolloutDevice
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.states.install import INSTALLING_STATES, TIMED_OUT

logger = logging.getLogger(__name__)


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def arm_deadlines(
    row: RolloutDevice, rollout: Rollout, now: datetime, wave_deadline: datetime
) -> None:
    """Start the device's clocks for a (new) offer: its install deadline from ``now``,
    capped by ``wave_deadline``."""
    row.offered_at = now
    row.deadline_at = now + timedelta(seconds=rollout.install_timeout_s)
    row.wave_deadline_at = wave_deadline
    row.paused_at = None
    row.timed_out_in = None
    row.late_state = None


def pause_clock(row: RolloutDevice, now: datetime) -> None:
    """The device is offline: its install clock stands still from ``now``."""
    if row.paused_at is None:
        row.paused_at = now


def resume_clock(row: RolloutDevice, now: datetime) -> None:
    """The device is back: its install deadline moves on by the time it was away."""
    if row.paused_at is None:
        return
    if row.deadline_at is not None:
        row.deadline_at = aware(row.deadline_at) + (now - aware(row.paused_at))
    row.paused_at = None


def overdue(row: RolloutDevice, rollout: Rollout, now: datetime) -> str | None:
    """Why an online device's install is out of time at ``now``; None while it has time."""
    if row.wave_deadline_at is not None and now >= aware(row.wave_deadline_at):
        return f"wave {row.wave + 1} deadline passed ({rollout.wave_timeout_s:g} s)"
    if row.deadline_at is not None and now >= aware(row.deadline_at):
        return f"install deadline passed ({rollout.install_timeout_s:g} s online since the offer)"
    return None


def time_out(row: RolloutDevice, reason: str, now: datetime) -> None:
    """Mark the row ``timed_out``, keeping the state it last reported."""
    row.timed_out_in = row.state
    row.state = TIMED_OUT
    row.reason = f"{reason} in {row.timed_out_in}"
    row.paused_at = None
    row.updated_at = now


def audit_time_outs(
    session: Session, rollout: Rollout, rows: list[RolloutDevice], actor: str
) -> None:
    """One audit entry for the devices timed out together, with their last states."""
    if not rows:
        return
    record_audit(
        session=session,
        actor=actor,
        action="rollout.timeout",
        rollout_id=rollout.id,
        reason=f"{len(rows)} device(s) timed out: " + "; ".join(
            f"{r.device_id} {r.reason}" for r in rows
        ),
        detail={"devices": {r.device_id: r.timed_out_in for r in rows},
                "waves": sorted({r.wave + 1 for r in rows})},
    )  # fmt: skip
    for row in rows:
        logger.warning(
            "device timed out rollout_id=%s device_id=%s last_state=%s reason=%s",
            rollout.id,
            row.device_id,
            row.timed_out_in,
            row.reason,
        )


def online_devices(session: Session, device_ids: list[str]) -> set[str]:
    if not device_ids:
        return set()
    return set(
        session.exec(
            select(Device.id).where(col(Device.id).in_(device_ids), col(Device.online).is_(True))
        ).all()
    )


def enforce_deadlines(
    *, session: Session, rollout: Rollout, now: datetime, actor: str
) -> list[RolloutDevice]:
    """Pause the clocks of offline devices, resume returning ones, time out the late.

    Covers every unfinished device of the waves started so far; the caller commits.

    Returns:
        The rows timed out now (already audited).
    """
    rows = session.exec(
        select(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == rollout.id,
            col(RolloutDevice.wave) <= rollout.current_wave,
            col(RolloutDevice.state).in_(INSTALLING_STATES),
        )
        .order_by(col(RolloutDevice.device_id))
    ).all()
    online = online_devices(session, [r.device_id for r in rows])
    timed_out: list[RolloutDevice] = []
    for row in rows:
        if row.device_id not in online:
            pause_clock(row, now)
        else:
            resume_clock(row, now)
            reason = overdue(row, rollout, now)
            if reason is not None:
                time_out(row, reason, now)
                timed_out.append(row)
        session.add(row)
    audit_time_outs(session, rollout, timed_out, actor)
    return timed_out
