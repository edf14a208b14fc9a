"""Device reports: install progress from the agents, and devices coming back online.

Only the device's own row changes here; the orchestrator decides, on its next pass,
what the rollout does about it.

Offline devices: offers go out with MQTT QoS 1 to a persistent session, so a device
gets them when it returns; when it comes back online the control plane re-offers
anything still unfinished in an ``in_progress`` rollout (``reoffer_on_reconnect``).
"""

from __future__ import annotations

import logging

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    Rollout,
    RolloutDevice,
    utcnow,
)
from edgefleet.control_plane.services.rollouts.outbox import (
    FleetPublisher,
    bundle_offer,
    shadow_start,
)
from edgefleet.messages import InstallReport
from edgefleet.states.install import (
    FAILED_STATES,
    INSTALLING_STATES,
    TERMINAL_DEVICE_STATES,
    device_state,
)
from edgefleet.states.rollout import RUNNING_ROLLOUT_STATES

logger = logging.getLogger(__name__)

# Agent states the rollout table does not distinguish.


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
    # Replicas share reports through a shared subscription, so two of one device's
    # reports can be applied at once: lock the row and judge the newest state.
    locked = session.get(
        RolloutDevice,
        (row.rollout_id, row.device_id),
        with_for_update=True,
        populate_existing=True,
    )
    assert locked is not None
    row = locked
    state = device_state(report.state)
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
    if report.install_seconds is not None:
        row.install_seconds = report.install_seconds
    row.updated_at = now
    session.add(row)
    if state == "active":
        device = session.get(Device, device_id)
        bundle = session.get(Bundle, rollout.bundle_id)
        if device is not None and bundle is not None:
            device.bundle_id = bundle.id
            device.release = bundle.release
            device.model = bundle.model
            device.model_version = bundle.model_version
            session.add(device)
    session.commit()
    session.refresh(row)
    return row


def reoffer_on_reconnect(*, session: Session, publisher: FleetPublisher, device_id: str) -> int:
    """A device came back online: offer again whatever is unfinished in running rollouts.

    Returns:
        How many offers and shadow_start commands were sent.
    """
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
        else:
            publisher.publish_offer(device_id, bundle_offer(bundle, rollout))
        sent += 1
        logger.info(
            "re-offered on reconnect device_id=%s rollout_id=%s state=%s",
            device_id,
            rollout.id,
            row.state,
        )
    return sent
