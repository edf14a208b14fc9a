from __future__ import annotations

from fastapi import APIRouter, status

from control_plane.api.deps import LinkDep, SessionDep
from control_plane.models import RolloutCreate, RolloutPublic
from control_plane.services import rollouts as service

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(session: SessionDep, link: LinkDep, rollout_in: RolloutCreate) -> RolloutPublic:
    rollout = service.create_rollout(session=session, publisher=link, rollout_in=rollout_in)
    return service.rollout_public(session=session, rollout=rollout)


@router.get("")
def list_rollouts(session: SessionDep) -> list[RolloutPublic]:
    return [
        service.rollout_public(session=session, rollout=r)
        for r in service.list_rollouts(session=session)
    ]


@router.get("/{rollout_id}")
def read_rollout(session: SessionDep, rollout_id: int) -> RolloutPublic:
    rollout = service.get_rollout(session=session, rollout_id=rollout_id)
    return service.rollout_public(session=session, rollout=rollout)
