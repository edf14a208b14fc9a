from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.control_plane.api.deps import LinkDep, SessionDep
from edgefleet.control_plane.api.routes.rollouts import ActorDep
from edgefleet.control_plane.core.tables import DeviceLabelsUpdate, DevicePublic
from edgefleet.control_plane.services import devices as service
from edgefleet.control_plane.services.device_logs import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    DeviceLogs,
    fetch_device_logs,
)
from edgefleet.control_plane.services.groups import set_device_labels
from edgefleet.messages import LOG_DEFAULT_BYTES, LOG_MAX_BYTES, LOG_MAX_SINCE_S

router = APIRouter(prefix="/devices", tags=["devices"])


@router.get("")
def list_devices(session: SessionDep) -> list[DevicePublic]:
    rejected = service.rejected_totals(session=session)
    devices = [DevicePublic.model_validate(d) for d in service.list_devices(session=session)]
    for device in devices:
        device.rejected_messages = rejected.get(device.id, 0)
    return devices


@router.get("/{device_id}")
def read_device(session: SessionDep, device_id: str) -> DevicePublic:
    """The device, with how many of its messages were refused, per channel and reason."""
    device = service.get_device(session=session, device_id=device_id)
    return service.device_public(session=session, device=device)


@router.put("/{device_id}/labels")
def set_labels(
    session: SessionDep, actor: ActorDep, device_id: str, labels_in: DeviceLabelsUpdate
) -> DevicePublic:
    device = set_device_labels(
        session=session, device_id=device_id, labels=labels_in.labels, actor=actor
    )
    return DevicePublic.model_validate(device)


@router.get("/{device_id}/logs")
def read_device_logs(
    session: SessionDep,
    link: LinkDep,
    actor: ActorDep,
    device_id: str,
    since: Annotated[int, Query(ge=1, le=LOG_MAX_SINCE_S, description="seconds back")] = 3600,
    max_bytes: Annotated[int, Query(ge=1, le=LOG_MAX_BYTES)] = LOG_DEFAULT_BYTES,
    timeout: Annotated[float, Query(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S,
) -> DeviceLogs:
    """The device agent's recent log, fetched over MQTT (operator role; audited).

    504 when the device is offline or does not answer within ``timeout`` seconds.
    """
    return fetch_device_logs(
        session=session,
        link=link,
        device_id=device_id,
        since_s=since,
        max_bytes=max_bytes,
        actor=actor,
        timeout_s=timeout,
    )
