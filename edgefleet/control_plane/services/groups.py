"""Device groups (named explicit sets) and device labels, both used by rollout selectors.

A group may also hold a maintenance window (``set_group_window``): its members' offers
carry it when the rollout names none (the rollout's own window wins).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import InvalidRequestError, NotFoundError
from edgefleet.control_plane.core.tables import (
    Device,
    DeviceGroup,
    DeviceGroupUpdate,
    RolloutWindow,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit

logger = logging.getLogger(__name__)
GROUP_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def set_group(
    *, session: Session, name: str, group_in: DeviceGroupUpdate, actor: str
) -> DeviceGroup:
    """Create or replace group ``name``; every member must be a known device.

    Args:
        session: the caller's session; committed here, with the audit entry.
        name: the group's name (``GROUP_NAME_PATTERN``, checked by the API).
        group_in: the members (duplicates dropped, order kept) and description.
        actor: who sets it, for the audit log.

    Raises:
        InvalidRequestError: a member is not a known device.
    """
    device_ids = list(dict.fromkeys(group_in.device_ids))
    unknown = [d for d in device_ids if session.get(Device, d) is None]
    if unknown:
        raise InvalidRequestError(f"unknown devices: {', '.join(unknown)}")
    group = session.get(DeviceGroup, name) or DeviceGroup(name=name)
    group.device_ids = device_ids
    group.description = group_in.description
    group.updated_at = utcnow()
    session.add(group)
    record_audit(
        session=session,
        actor=actor,
        action="group.set",
        target=name,
        detail={"device_ids": device_ids},
    )
    session.commit()
    session.refresh(group)
    return group


def set_group_window(
    *, session: Session, name: str, window: RolloutWindow | None, actor: str
) -> DeviceGroup:
    """Store ``window`` as group ``name``'s maintenance window (None clears it); audited.

    Its members' offers carry it from then on, unless a rollout gives its own window
    (``rollouts.outbox.device_offer``); offers already sent keep theirs.

    Raises:
        NotFoundError: no such group.
    """
    group = get_group(session=session, name=name)
    group.maintenance_window = window.model_dump() if window is not None else None
    group.updated_at = utcnow()
    session.add(group)
    record_audit(session=session, actor=actor, action="group.window", target=name,
                 detail={"maintenance_window": group.maintenance_window})  # fmt: skip
    session.commit()
    session.refresh(group)
    return group


def window_for_device(*, session: Session, device_id: str) -> dict[str, Any] | None:
    """The maintenance window of ``device_id``'s groups: the first group by name that has
    one and lists the device; None when none does."""
    for group in list_groups(session=session):
        if group.maintenance_window and device_id in (group.device_ids or []):
            return dict(group.maintenance_window)
    return None


def list_groups(*, session: Session) -> Sequence[DeviceGroup]:
    """Every group, by name."""
    return session.exec(select(DeviceGroup).order_by(col(DeviceGroup.name))).all()


def get_group(*, session: Session, name: str) -> DeviceGroup:
    """The group ``name``.

    Raises:
        NotFoundError: no such group.
    """
    group = session.get(DeviceGroup, name)
    if group is None:
        raise NotFoundError(f"group {name} not found")
    return group


def delete_group(*, session: Session, name: str, actor: str) -> None:
    """Delete group ``name`` (rollouts already created keep their devices); audited.

    Raises:
        NotFoundError: no such group.
    """
    group = get_group(session=session, name=name)
    session.delete(group)
    record_audit(session=session, actor=actor, action="group.delete", target=name)
    session.commit()


def set_device_labels(
    *, session: Session, device_id: str, labels: dict[str, str], actor: str
) -> Device:
    """Replace ``device_id``'s labels with ``labels`` (not merged); audited.

    Raises:
        NotFoundError: no such device.
    """
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id} not found")
    device.labels = dict(labels)
    session.add(device)
    record_audit(
        session=session,
        actor=actor,
        action="device.labels",
        target=device_id,
        detail={"labels": dict(labels)},
    )
    session.commit()
    session.refresh(device)
    return device
