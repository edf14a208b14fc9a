"""The fleet as the control plane sees it from device status messages."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlmodel import Session, col, select

from control_plane.errors import NotFoundError
from control_plane.models import Device, utcnow
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
    # A last will carries only ``online``: keep what we knew about the device.
    for field in ("profile", "agent_version", "model", "model_version", "bundle_id", "release"):
        value = getattr(status, field)
        if value is not None:
            setattr(device, field, value)
    session.add(device)
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
