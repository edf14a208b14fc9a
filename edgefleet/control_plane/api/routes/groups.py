from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from edgefleet.control_plane.api.deps import SessionDep
from edgefleet.control_plane.api.routes.rollouts import ActorDep
from edgefleet.control_plane.core.tables import (
    DeviceGroupPublic,
    DeviceGroupUpdate,
    GroupWindowUpdate,
)
from edgefleet.control_plane.services import groups as service

router = APIRouter(prefix="/groups", tags=["groups"])
GroupName = Annotated[str, Path(pattern=service.GROUP_NAME_PATTERN)]


@router.get("")
def list_groups(session: SessionDep) -> list[DeviceGroupPublic]:
    return [DeviceGroupPublic.model_validate(g) for g in service.list_groups(session=session)]


@router.get("/{name}")
def read_group(session: SessionDep, name: GroupName) -> DeviceGroupPublic:
    return DeviceGroupPublic.model_validate(service.get_group(session=session, name=name))


@router.put("/{name}")
def set_group(
    session: SessionDep, actor: ActorDep, name: GroupName, group_in: DeviceGroupUpdate
) -> DeviceGroupPublic:
    group = service.set_group(session=session, name=name, group_in=group_in, actor=actor)
    return DeviceGroupPublic.model_validate(group)


@router.put("/{name}/window")
def set_group_window(
    session: SessionDep, actor: ActorDep, name: GroupName, window_in: GroupWindowUpdate
) -> DeviceGroupPublic:
    """The group's maintenance window (null clears it): its members' offers carry it
    when their rollout names none."""
    group = service.set_group_window(
        session=session, name=name, window=window_in.maintenance_window, actor=actor
    )
    return DeviceGroupPublic.model_validate(group)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_group(session: SessionDep, actor: ActorDep, name: GroupName) -> None:
    service.delete_group(session=session, name=name, actor=actor)
