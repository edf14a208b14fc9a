from __future__ import annotations

from fastapi import APIRouter

from edgefleet.control_plane.api.deps import SessionDep
from edgefleet.control_plane.api.routes.rollouts import ActorDep
from edgefleet.control_plane.core.tables import DeviceLabelsUpdate, DevicePublic
from edgefleet.control_plane.services import devices as service
from edgefleet.control_plane.services.groups import set_device_labels

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
