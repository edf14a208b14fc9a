"""The fleet as the control plane sees it from device status messages."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlmodel import Session, col, select

from control_plane.errors import NotFoundError
from control_plane.models import Device, utcnow
from control_plane.repository import raise_trust_floor
from edgefleet.messages import DeviceStatus

logger = logging.getLogger(__name__)


def upsert_device_status(*, session: Session, device_id: str, status: DeviceStatus) -> Device:
    """Record a status message from ``device_id`` (taken from the topic, not the payload)."""
    device = session.get(Device, device_id)
    if device is None:
        device = Device(id=device_id)
        logger.info("device discovered device_id=%s", device_id)
    device.online = status.online
    device.last_seen = utcnow()
    device.stale = False
    # A last will carries only ``online``: keep what we knew about the device.
    for field in ("profile", "agent_version", "model", "model_version", "bundle_id", "release"):
        value = getattr(status, field)
        if value is not None:
            setattr(device, field, value)
    session.add(device)
    if status.trusted_versions:
        raise_trust_floor(session=session, device_id=device_id, versions=status.trusted_versions)
    session.commit()
    session.refresh(device)
    return device


def list_devices(*, session: Session) -> Sequence[Device]:
    return session.exec(select(Device).order_by(col(Device.id))).all()


def get_device(*, session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id} not found")
    return device


def mark_stale_devices(*, session: Session, silent_for: timedelta) -> list[str]:
    """Flag devices that say they are online but sent nothing for ``silent_for``.

    Presence comes from the retained status and its last will; a hung agent or a
    will the broker lost leaves a device "online" forever. Telemetry and status
    messages refresh ``last_seen``, so silence beyond the window means trouble.
    """
    cutoff = utcnow() - silent_for
    devices = session.exec(
        select(Device).where(
            col(Device.online).is_(True),
            col(Device.stale).is_(False),
            col(Device.last_seen) < cutoff,
        )
    ).all()
    for device in devices:
        device.stale = True
        session.add(device)
        logger.warning("device stale device_id=%s last_seen=%s", device.id, device.last_seen)
    session.commit()
    return [d.id for d in devices]


def touch_device(*, session: Session, device_id: str) -> None:
    """A message from the device proves it is alive: refresh ``last_seen``."""
    device = session.get(Device, device_id)
    if device is not None:
        device.last_seen = utcnow()
        device.stale = False
        session.add(device)
