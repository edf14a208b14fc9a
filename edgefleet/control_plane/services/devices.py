"""The fleet as the control plane sees it from device status messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, func, select

from edgefleet import schema
from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.tables import (
    Device,
    DevicePublic,
    MessageRejection,
    MessageRejectionPublic,
    utcnow,
)
from edgefleet.control_plane.trust.repository import raise_trust_floor
from edgefleet.messages import DeviceStatus

logger = logging.getLogger(__name__)


class StatusUpdate(NamedTuple):
    """What ``upsert_device_status`` recorded."""

    device: Device
    came_online: bool
    """The status says online and the device was not (new, or back from offline)."""


def _insert_for(session: Session) -> Callable[..., Any]:
    """The dialect's ``INSERT … ON CONFLICT`` builder (SQLite and PostgreSQL have one)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"no INSERT … ON CONFLICT for database dialect {name}")


def upsert_device_status(*, session: Session, device_id: str, status: DeviceStatus) -> StatusUpdate:
    """Record a status message from ``device_id`` (taken from the topic, not the payload).

    Every replica receives every status (retained statuses reach only a plain
    subscription, not a shared one), so replicas race to insert a new device: the row
    is created with ``INSERT … ON CONFLICT DO NOTHING`` and then updated under a row
    lock, so each replica's update applies in turn and only the first one to see the
    device come online reports ``came_online`` (one re-offer, not one per replica).

    A last will carries only ``online``: the fields it leaves out keep what was known.
    The trusted metadata versions the status reports raise the repository's trust
    floor (``trust.repository.raise_trust_floor``) in the same commit.

    Returns:
        The device as committed, and whether this status brought it online (the
        caller re-offers its unfinished rollouts then).
    """
    insert = _insert_for(session)
    created = session.execute(
        insert(Device)
        .values(id=device_id, online=False, stale=False, labels={})
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(col(Device.id))
    ).first()
    if created is not None:
        logger.info("device discovered device_id=%s", device_id)
    device = session.get(Device, device_id, with_for_update=True, populate_existing=True)
    assert device is not None  # inserted above, or already there
    came_online = status.online and not device.online
    device.online = status.online
    device.last_seen = utcnow()
    device.stale = False
    # A last will carries only ``online``: keep what we knew about the device.
    for field in ("profile", "agent_version", "model", "model_version", "bundle_id", "release"):
        value = getattr(status, field)
        if value is not None:
            setattr(device, field, value)
    if status.models is not None:  # every model it serves (a last will carries none)
        device.models = [schema.to_builtins(m, omit_none=True) for m in status.models]
    if status.spool_depth is not None:  # the depth now, republished as it changes
        device.spool_depth = status.spool_depth
    session.add(device)
    if status.trusted_versions:
        raise_trust_floor(session=session, device_id=device_id, versions=status.trusted_versions)
    session.commit()
    session.refresh(device)
    return StatusUpdate(device, came_online)


def record_rejections(*, session: Session, counts: Mapping[tuple[str, str, str], int]) -> None:
    """Add ``counts`` of refused messages, keyed ``(device_id, channel, reason)``."""
    if not counts:
        return
    insert = _insert_for(session)
    now = utcnow()
    for (device_id, channel, reason), count in sorted(counts.items()):
        statement = insert(MessageRejection).values(
            device_id=device_id, channel=channel, reason=reason, count=count, last_at=now
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["device_id", "channel", "reason"],
                set_={"count": MessageRejection.count + statement.excluded.count, "last_at": now},
            )
        )
    session.commit()


def device_public(*, session: Session, device: Device) -> DevicePublic:
    """A device as the API shows it, with the messages of its that were refused."""
    rows = session.exec(
        select(MessageRejection)
        .where(MessageRejection.device_id == device.id)
        .order_by(col(MessageRejection.channel), col(MessageRejection.reason))
    ).all()
    public = DevicePublic.model_validate(device)
    public.rejections = [MessageRejectionPublic.model_validate(r) for r in rows]
    public.rejected_messages = sum(r.count for r in rows)
    return public


def rejected_totals(*, session: Session) -> dict[str, int]:
    """Refused messages per device, for the devices that had any."""
    rows = session.exec(
        select(MessageRejection.device_id, func.sum(MessageRejection.count)).group_by(
            col(MessageRejection.device_id)
        )
    ).all()
    return {device_id: int(total) for device_id, total in rows}


def list_devices(*, session: Session) -> Sequence[Device]:
    """Every device heard from, by id."""
    return session.exec(select(Device).order_by(col(Device.id))).all()


def get_device(*, session: Session, device_id: str) -> Device:
    """The device ``device_id``.

    Raises:
        NotFoundError: no status was ever received from it.
    """
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id} not found")
    return device


def mark_stale_devices(*, session: Session, silent_for: timedelta) -> list[str]:
    """Flag devices that say they are online but sent nothing for ``silent_for``.

    Presence comes from the retained status and its last will; a hung agent or a
    will the broker lost leaves a device "online" forever. Telemetry and status
    messages refresh ``last_seen``, so silence beyond the window means trouble.

    Returns:
        The ids of the devices flagged now (not those already stale); committed.
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
    """A message from the device proves it is alive: refresh ``last_seen``.

    Added to ``session`` uncommitted, so it commits with what the message brought;
    an unknown ``device_id`` is ignored (its first status creates the device).
    """
    device = session.get(Device, device_id)
    if device is not None:
        device.last_seen = utcnow()
        device.stale = False
        session.add(device)
