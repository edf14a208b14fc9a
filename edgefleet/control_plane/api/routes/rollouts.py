from __future__ import annotations

from fastapi import APIRouter, status

from edgefleet.control_plane.api.deps import ActorDep, DbId, LinkDep, SessionDep
from edgefleet.control_plane.core.tables import RolloutAction, RolloutCreate, RolloutPublic
from edgefleet.control_plane.services.rollouts import lifecycle, views
from edgefleet.states.rollout import OperatorAction

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(
    session: SessionDep, link: LinkDep, actor: ActorDep, rollout_in: RolloutCreate
) -> RolloutPublic:
    rollout = lifecycle.create_rollout(
        session=session, publisher=link, rollout_in=rollout_in, actor=actor
    )
    return views.rollout_public(session=session, rollout=rollout)


@router.get("")
def list_rollouts(session: SessionDep) -> list[RolloutPublic]:
    return [
        views.rollout_public(session=session, rollout=r)
        for r in views.list_rollouts(session=session)
    ]


@router.get("/{rollout_id}")
def read_rollout(session: SessionDep, rollout_id: DbId) -> RolloutPublic:
    rollout = views.get_rollout(session=session, rollout_id=rollout_id)
    return views.rollout_public(session=session, rollout=rollout)


@router.post("/{rollout_id}/{action}")
def act_on_rollout(
    session: SessionDep,
    link: LinkDep,
    actor: ActorDep,
    rollout_id: DbId,
    action: OperatorAction,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Operator actions: start a draft, pause, resume, promote a wave, retry the failed and
    timed-out devices, abort, roll back."""
    rollout = lifecycle.act_on_rollout(
        session=session,
        publisher=link,
        rollout_id=rollout_id,
        action=action,
        actor=actor,
        reason=body.reason if body else None,
    )
    return views.rollout_public(session=session, rollout=rollout)
