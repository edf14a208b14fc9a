from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, status

from edgefleet.control_plane.api.deps import ActorDep, DbId, LinkDep, SessionDep
from edgefleet.control_plane.core.tables import RolloutAction, RolloutCreate, RolloutPublic
from edgefleet.control_plane.services import rollouts as service

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


Action = Literal["start", "pause", "resume", "promote", "abort", "rollback"]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(
    session: SessionDep, link: LinkDep, actor: ActorDep, rollout_in: RolloutCreate
) -> RolloutPublic:
    rollout = service.create_rollout(
        session=session, publisher=link, rollout_in=rollout_in, actor=actor
    )
    return service.rollout_public(session=session, rollout=rollout)


@router.get("")
def list_rollouts(session: SessionDep) -> list[RolloutPublic]:
    return [
        service.rollout_public(session=session, rollout=r)
        for r in service.list_rollouts(session=session)
    ]


@router.get("/{rollout_id}")
def read_rollout(session: SessionDep, rollout_id: DbId) -> RolloutPublic:
    rollout = service.get_rollout(session=session, rollout_id=rollout_id)
    return service.rollout_public(session=session, rollout=rollout)


@router.post("/{rollout_id}/{action}")
def act_on_rollout(
    session: SessionDep,
    link: LinkDep,
    actor: ActorDep,
    rollout_id: DbId,
    action: Action,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Operator actions: start a draft, pause, resume, promote a wave, abort, roll back."""
    rollout = service.act_on_rollout(
        session=session,
        publisher=link,
        rollout_id=rollout_id,
        action=action,
        actor=actor,
        reason=body.reason if body else None,
    )
    return service.rollout_public(session=session, rollout=rollout)
