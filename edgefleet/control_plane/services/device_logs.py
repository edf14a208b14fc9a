"""Device logs on demand: ask one device for its recent log over MQTT and wait.

Every request is audited (``device.logs``), answered or not, before it is sent. A
device the control plane knows to be offline is refused at once; one that stays silent
is refused when ``timeout_s`` runs out. Both are ``DeviceTimeoutError`` (HTTP 504).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlmodel import Session, SQLModel

from edgefleet.control_plane.broker.link import FleetLink
from edgefleet.control_plane.core.errors import DeviceTimeoutError
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.devices import get_device
from edgefleet.messages import LogRequest

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0


class DeviceLogLine(SQLModel):
    ts: datetime
    level: str
    logger: str
    message: str


class DeviceLogs(SQLModel):
    """A device's log of the last ``since_s`` seconds, oldest line first. ``truncated``:
    ``omitted`` older lines of that window were left out to stay within ``max_bytes``."""

    device_id: str
    since_s: int
    max_bytes: int
    truncated: bool
    omitted: int
    lines: list[DeviceLogLine]


def fetch_device_logs(
    *,
    session: Session,
    link: FleetLink,
    device_id: str,
    since_s: int,
    max_bytes: int,
    actor: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DeviceLogs:
    """The log ``device_id`` kept for the last ``since_s`` seconds, at most ``max_bytes``.

    Raises:
        NotFoundError: No such device.
        DeviceTimeoutError: The device is offline, or did not answer within ``timeout_s``.
        BrokerError: This control plane is not connected to the broker.
    """
    device = get_device(session=session, device_id=device_id)
    record_audit(
        session=session,
        actor=actor,
        action="device.logs",
        target=device_id,
        detail={"since_s": since_s, "max_bytes": max_bytes},
    )
    session.commit()
    if not device.online:
        seen = device.last_seen.isoformat() if device.last_seen else "never"
        raise DeviceTimeoutError(
            f"device {device_id} is offline (last seen {seen}): its log cannot be fetched "
            "until it reconnects",
            device_id=device_id,
        )
    request = LogRequest(since_s=since_s, max_bytes=max_bytes)
    answer = link.request_logs(device_id, request, timeout=timeout_s)
    logger.info(
        "device logs fetched device_id=%s lines=%d omitted=%d",
        device_id,
        len(answer.records),
        answer.omitted,
    )
    return DeviceLogs(
        device_id=device_id,
        since_s=since_s,
        max_bytes=max_bytes,
        truncated=answer.truncated,
        omitted=answer.omitted,
        lines=[
            DeviceLogLine(
                ts=datetime.fromtimestamp(r.ts, UTC),
                level=r.level,
                logger=r.logger,
                message=r.message,
            )
            for r in answer.records
        ],
    )
