"""Rollouts: offer a bundle to devices and follow their install reports.

A rollout is ``in_progress`` until every device is terminal: ``complete`` when all
are active, ``failed`` when at least one failed. Offers go out over MQTT QoS 1; an
offline device gets its offer from its persistent session when it returns.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from sqlmodel import Session, col, select

from control_plane.errors import InvalidRequestError, NotFoundError
from control_plane.models import (
    TERMINAL_DEVICE_STATES,
    Bundle,
    Device,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    RolloutDevicePublic,
    RolloutPublic,
    utcnow,
)
from edgefleet.messages import BundleOffer, InstallReport

logger = logging.getLogger(__name__)

# Agent states the rollout table does not distinguish.
_REPORT_STATE = {"rolled_back": "failed"}


class OfferPublisher(Protocol):
    def publish_offer(self, device_id: str, offer: BundleOffer) -> None: ...


def create_rollout(
    *, session: Session, publisher: OfferPublisher, rollout_in: RolloutCreate
) -> Rollout:
    """Create a rollout of ``rollout_in.bundle_id`` and offer the bundle to its devices.

    Without ``device_ids`` every known device of the bundle's profile is included.
    """
    bundle = session.get(Bundle, rollout_in.bundle_id)
    if bundle is None:
        raise NotFoundError(f"bundle {rollout_in.bundle_id} not found")
    if rollout_in.device_ids is None:
        devices = list(session.exec(select(Device).where(Device.profile == bundle.profile)).all())
    else:
        devices = []
        for device_id in dict.fromkeys(rollout_in.device_ids):
            device = session.get(Device, device_id)
            if device is None:
                raise InvalidRequestError(f"device {device_id} is not known")
            if device.profile != bundle.profile:
                raise InvalidRequestError(
                    f"device {device_id} has profile {device.profile}; "
                    f"bundle {bundle.id} is built for {bundle.profile}"
                )
            devices.append(device)
    if not devices:
        raise InvalidRequestError(f"no devices to roll bundle {bundle.id} out to")

    rollout = Rollout(bundle_id=bundle.id)
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    for device in devices:
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id))
    session.commit()
    session.refresh(rollout)
    assert rollout.id is not None
    logger.info(
        "rollout created rollout_id=%d bundle_id=%s devices=%d",
        rollout.id,
        bundle.id,
        len(devices),
    )
    for device in devices:
        offer = BundleOffer(
            rollout_id=rollout.id, bundle_id=bundle.id, target=bundle.target, release=bundle.release
        )
        publisher.publish_offer(device.id, offer)
    return rollout


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


def _rollout_state(states: Sequence[str]) -> str:
    if states and all(s == "active" for s in states):
        return "complete"
    if states and all(s in TERMINAL_DEVICE_STATES for s in states):
        return "failed"
    return "in_progress"


def apply_install_report(
    *, session: Session, device_id: str, report: InstallReport
) -> RolloutDevice | None:
    """Record a device's install progress; None when it matches no rollout of ours."""
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
    state = _REPORT_STATE.get(report.state, report.state)
    if row.state in TERMINAL_DEVICE_STATES and state not in TERMINAL_DEVICE_STATES:
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
    session.flush()
    states = session.exec(
        select(RolloutDevice.state).where(RolloutDevice.rollout_id == rollout.id)
    ).all()
    new_state = _rollout_state(states)
    if new_state != rollout.state:
        logger.info(
            "rollout state changed rollout_id=%s state=%s previous=%s",
            rollout.id,
            new_state,
            rollout.state,
        )
        rollout.state = new_state
    rollout.updated_at = now
    session.add(rollout)
    session.commit()
    session.refresh(row)
    return row


def list_rollouts(*, session: Session) -> Sequence[Rollout]:
    return session.exec(select(Rollout).order_by(col(Rollout.id))).all()


def get_rollout(*, session: Session, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    return rollout


def rollout_public(*, session: Session, rollout: Rollout) -> RolloutPublic:
    """The API view of a rollout: its devices and how many are in each state."""
    rows = session.exec(
        select(RolloutDevice)
        .where(RolloutDevice.rollout_id == rollout.id)
        .order_by(col(RolloutDevice.device_id))
    ).all()
    assert rollout.id is not None
    return RolloutPublic(
        id=rollout.id,
        bundle_id=rollout.bundle_id,
        state=rollout.state,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        counts=dict(Counter(row.state for row in rows)),
        devices=[
            RolloutDevicePublic(
                device_id=row.device_id,
                state=row.state,
                reason=row.reason,
                install_seconds=row.install_seconds,
                updated_at=row.updated_at,
            )
            for row in rows
        ],
    )
