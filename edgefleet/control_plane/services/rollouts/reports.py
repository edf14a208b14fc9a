"""Device reports: install progress from the agents, and devices coming back online.

Only the device's own row changes here; the orchestrator decides, on its next pass,
what the rollout does about it.

Offline devices: offers go out with MQTT QoS 1 to a persistent session, so a device
gets them when it returns; when it comes back online the control plane re-offers
anything still unfinished in an ``in_progress`` rollout (``reoffer_on_reconnect``),
its install clock running again where it stopped, unless its wave's deadline passed
while it was away: then it is timed out instead (see ``deadlines``).

A device that was timed out and reports later (it finished after all) has the report
recorded in ``late_state`` and, when it is an outcome, in the audit log
(``rollout.late_report``); the row stays ``timed_out`` and the verdict stands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    Rollout,
    RolloutDevice,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.rollouts.atomic import order_for_device
from edgefleet.control_plane.services.rollouts.deadlines import (
    audit_time_outs,
    overdue,
    resume_clock,
    time_out,
)
from edgefleet.control_plane.services.rollouts.outbox import (
    FleetPublisher,
    device_offer,
    shadow_start,
)
from edgefleet.messages import InstallReport
from edgefleet.states.install import (
    FAILED_STATES,
    FINISHED_STATES,
    INSTALLING_STATES,
    TERMINAL_DEVICE_STATES,
    TIMED_OUT,
    device_state,
)
from edgefleet.states.rollout import RUNNING_ROLLOUT_STATES

logger = logging.getLogger(__name__)


def _find_rollout_device(
    session: Session, device_id: str, report: InstallReport
) -> tuple[Rollout, RolloutDevice] | None:
    if report.rollout_id is not None:
        rollout = session.get(Rollout, report.rollout_id)
        row = session.get(RolloutDevice, (report.rollout_id, device_id))
        if rollout is None or row is None or rollout.bundle_id != report.bundle_id:
            return None
        return rollout, row
    # A report without a rollout id belongs to the newest rollout of that bundle.
    result = session.exec(
        select(Rollout, RolloutDevice)
        .join(RolloutDevice, col(RolloutDevice.rollout_id) == col(Rollout.id))
        .where(Rollout.bundle_id == report.bundle_id, RolloutDevice.device_id == device_id)
        .order_by(col(Rollout.id).desc())
    ).first()
    return None if result is None else (result[0], result[1])


def apply_install_report(
    *, session: Session, device_id: str, report: InstallReport
) -> RolloutDevice | None:
    """Record a device's install progress, and commit it.

    Only the device's row changes here: the orchestrator decides what the rollout
    does about it, on its next pass.

    Returns:
        The device's row (unchanged when the report came too late to matter), or
        None when the report matches no rollout of ours.
    """
    row = _apply(session, device_id, report, locked=False)
    session.commit()
    if row is not None:
        session.refresh(row)
    return row


def apply_install_reports(
    *, session: Session, reports: Sequence[tuple[str, InstallReport]]
) -> list[RolloutDevice | None]:
    """Record a burst of install reports, in order, in one transaction; commit once.

    A wave of 1,000 devices sends about five reports each; one transaction (and one
    commit) per report made the control plane's per-device work, not the broker, set
    the time to all active. The rows the burst names are read, and locked, in one
    statement, ordered by key so that two replicas locking overlapping bursts wait for
    each other instead of deadlocking; each report is then judged as
    ``apply_install_report`` judges it. If the transaction fails the caller applies
    the burst report by report, so one bad report costs only itself.

    Returns:
        Per report, in order: the device's row, or None when it matches no rollout.
    """
    _lock_rows(session, reports)
    rows = [_apply(session, device_id, report, locked=True) for device_id, report in reports]
    session.commit()
    return rows


def _lock_rows(session: Session, reports: Sequence[tuple[str, InstallReport]]) -> None:
    """Load (and lock) every row, rollout and device a burst names into the session."""
    keys = sorted({(r.rollout_id, d) for d, r in reports if r.rollout_id is not None})
    devices = sorted({d for d, _ in reports})
    if keys:
        rollout_ids = sorted({k[0] for k in keys})
        session.exec(select(Rollout).where(col(Rollout.id).in_(rollout_ids))).all()
        session.exec(
            select(RolloutDevice)
            .where(
                col(RolloutDevice.rollout_id).in_(rollout_ids),
                col(RolloutDevice.device_id).in_(devices),
            )
            .order_by(col(RolloutDevice.rollout_id), col(RolloutDevice.device_id))
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    session.exec(select(Device).where(col(Device.id).in_(devices))).all()


def _apply(
    session: Session, device_id: str, report: InstallReport, *, locked: bool
) -> RolloutDevice | None:
    """Judge one report against its row and change the row; the caller commits.

    ``locked``: the row was read with ``FOR UPDATE`` in this transaction already
    (``_lock_rows``); otherwise it is locked and read afresh here.
    """
    found = _find_rollout_device(session, device_id, report)
    if found is None:
        logger.info(
            "install report ignored device_id=%s bundle_id=%s rollout_id=%s",
            device_id,
            report.bundle_id,
            report.rollout_id,
        )
        return None
    rollout, row = found
    if not locked or report.rollout_id is None:
        # Replicas share reports through a shared subscription, so two of one device's
        # reports can be applied at once: lock the row and judge the newest state.
        fresh = session.get(
            RolloutDevice,
            (row.rollout_id, row.device_id),
            with_for_update=True,
            populate_existing=True,
        )
        assert fresh is not None
        row = fresh
    state = device_state(report.state)
    if row.state == TIMED_OUT:
        _record_late_report(session, rollout, row, state, report)
        return row
    # A report can beat the commit of the wave that offered it (offers go out before
    # the commit), so ``pending`` in a running rollout still takes reports.
    late = (
        row.state in ("superseded", "cancelled")
        or (row.state == "pending" and rollout.state not in RUNNING_ROLLOUT_STATES)
        or (row.state in TERMINAL_DEVICE_STATES and state not in TERMINAL_DEVICE_STATES)
        or (row.state == "rolling_back" and state not in FAILED_STATES)
    )
    if late:
        logger.info(
            "late install report ignored device_id=%s rollout_id=%s state=%s current=%s",
            device_id,
            rollout.id,
            state,
            row.state,
        )
        return row
    now = utcnow()
    row.state = state
    row.reason = report.reason
    if state not in INSTALLING_STATES:
        row.paused_at = None  # finished: no clock any more
    if report.install_seconds is not None:
        row.install_seconds = report.install_seconds
    if report.switched_at is not None:
        row.switched_at = report.switched_at
        row.switch_late_s = report.switch_late_s
    row.updated_at = now
    session.add(row)
    if state == "active":
        _record_running_bundle(session, device_id, rollout)
    return row


def _record_running_bundle(session: Session, device_id: str, rollout: Rollout) -> None:
    device = session.get(Device, device_id)
    bundle = session.get(Bundle, rollout.bundle_id)
    if bundle is not None and (bundle.manifest or {}).get("kind") == "agent":
        return  # an agent release: the model served is unchanged (status says the version)
    if device is not None and bundle is not None:
        device.bundle_id = bundle.id
        device.release = bundle.release
        device.model = bundle.model
        device.model_version = bundle.model_version
        session.add(device)


def _record_late_report(
    session: Session, rollout: Rollout, row: RolloutDevice, state: str, report: InstallReport
) -> None:
    """A report from a timed-out device: on record, the row and the verdict unchanged."""
    if row.late_state == state:
        return  # a resent report
    row.late_state = state
    row.updated_at = utcnow()
    session.add(row)
    if state == "active":
        _record_running_bundle(session, row.device_id, rollout)  # what it really runs
    logger.info(
        "report after time-out recorded device_id=%s rollout_id=%s state=%s",
        row.device_id,
        rollout.id,
        state,
    )
    if state in FINISHED_STATES:
        record_audit(
            session=session,
            actor=f"device:{row.device_id}",
            action="rollout.late_report",
            rollout_id=rollout.id,
            target=row.device_id,
            reason=f"reported {state} after it timed out in {row.timed_out_in}; "
            "it stays timed_out (retry to count it)",
            detail={"state": state, "timed_out_in": row.timed_out_in, "reason": report.reason},
        )


def reoffer_on_reconnect(*, session: Session, publisher: FleetPublisher, device_id: str) -> int:
    """A device came back online: offer again whatever is unfinished in running rollouts.

    Its install clocks run again from where they stopped; a device whose wave deadline
    passed while it was away is timed out instead of offered (and audited). Commits.

    Returns:
        How many offers and shadow_start commands were sent.
    """
    now = utcnow()
    rows = session.exec(
        select(RolloutDevice, Rollout)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(
            RolloutDevice.device_id == device_id,
            Rollout.state == "in_progress",
            col(RolloutDevice.state).in_([*INSTALLING_STATES, "shadowing", "rolling_back"]),
        )
    ).all()
    sent = 0
    for row, rollout in rows:
        bundle = session.get(Bundle, rollout.bundle_id)
        if bundle is None:
            continue
        if row.state == "shadowing":
            publisher.publish_command(device_id, shadow_start(bundle, rollout))
        elif row.state == "rolling_back":
            continue  # the command waits in the device's session
        elif (late := _resume_or_time_out(row, rollout, now)) is not None:
            audit_time_outs(session, rollout, [row], actor=f"device:{device_id}")
            logger.info("not re-offered: %s device_id=%s", late, device_id)
            continue
        else:
            publisher.publish_offer(device_id, device_offer(session, bundle, rollout, device_id))
            if (order := order_for_device(rollout, row)) is not None:
                publisher.publish_command(device_id, order)  # atomic: the order it missed
        sent += 1
        logger.info(
            "re-offered on reconnect device_id=%s rollout_id=%s state=%s",
            device_id,
            rollout.id,
            row.state,
        )
    session.commit()
    return sent


def _resume_or_time_out(row: RolloutDevice, rollout: Rollout, now: datetime) -> str | None:
    """Resume the row's clock; time it out (and say why) when it is already out of time."""
    resume_clock(row, now)
    reason = overdue(row, rollout, now)
    if reason is not None:
        time_out(row, reason, now)
    return reason
