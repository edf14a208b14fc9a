"""``/api/v1/config``: remote device configuration per fleet, group and device.

``PATCH`` sets and unsets keys of one scope (one new version, audited) and sends the
devices it reaches their new effective configuration; ``GET /config/devices/{id}``
shows a device's effective merge, where each key comes from, what the device reported
and where desired and reported differ. ``GET /config/schema`` lists the keys.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from edgefleet.control_plane.api.deps import ActorDep, LinkDep, SessionDep
from edgefleet.control_plane.core.tables import (
    ConfigChange,
    ConfigScopePublic,
    DeviceConfigPublic,
)
from edgefleet.control_plane.services import device_config as service
from edgefleet.control_plane.services.groups import GROUP_NAME_PATTERN
from edgefleet.device_config import FLAG_NAME_RE, FLAG_PREFIX, KEYS
from edgefleet.topics import DEVICE_ID_RE

router = APIRouter(prefix="/config", tags=["config"])
GroupName = Annotated[str, Path(pattern=GROUP_NAME_PATTERN)]
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_RE.pattern)]


@router.get("/schema")
def read_schema() -> dict[str, Any]:
    """The keys a scope may set, their types, bounds and whether they apply live."""
    return {
        "keys": [
            {
                "key": spec.key,
                "type": spec.kind.__name__,
                "applies": spec.applies,
                "help": spec.help,
                "minimum": spec.minimum,
                "maximum": spec.maximum,
                "choices": list(spec.choices) if spec.choices else None,
            }
            for spec in KEYS.values()
        ],
        "flags": {
            "key": f"{FLAG_PREFIX}<name>",
            "name_pattern": FLAG_NAME_RE.pattern,
            "types": ["bool", "int", "float", "str"],
            "applies": "live",
        },
    }


@router.get("/fleet")
def read_fleet(session: SessionDep) -> ConfigScopePublic:
    return service.get_scope(session=session, scope="fleet")


@router.patch("/fleet")
def change_fleet(
    session: SessionDep, link: LinkDep, actor: ActorDep, change: ConfigChange
) -> ConfigScopePublic:
    return service.set_config(
        session=session, publisher=link, scope="fleet", change=change, actor=actor
    )


@router.get("/groups/{name}")
def read_group(session: SessionDep, name: GroupName) -> ConfigScopePublic:
    return service.get_scope(session=session, scope="group", name=name)


@router.patch("/groups/{name}")
def change_group(
    session: SessionDep, link: LinkDep, actor: ActorDep, name: GroupName, change: ConfigChange
) -> ConfigScopePublic:
    return service.set_config(
        session=session, publisher=link, scope="group", name=name, change=change, actor=actor
    )


@router.get("/devices")
def list_devices(session: SessionDep) -> list[DeviceConfigPublic]:
    return service.list_device_configs(session=session)


@router.get("/devices/{device_id}")
def read_device(session: SessionDep, device_id: DeviceId) -> DeviceConfigPublic:
    return service.device_config(session=session, device_id=device_id)


@router.patch("/devices/{device_id}")
def change_device(
    session: SessionDep, link: LinkDep, actor: ActorDep, device_id: DeviceId, change: ConfigChange
) -> DeviceConfigPublic:
    service.set_config(
        session=session,
        publisher=link,
        scope="device",
        name=device_id,
        change=change,
        actor=actor,
    )
    return service.device_config(session=session, device_id=device_id)
