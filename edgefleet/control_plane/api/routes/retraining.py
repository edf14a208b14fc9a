"""Retraining requests from the drift loop, the per-model policy that governs them, and
the retraining hooks an admin defined (which a policy selects by name)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from edgefleet.control_plane.api.deps import ActorDep, DbId, PrincipalDep, SessionDep, SettingsDep
from edgefleet.control_plane.core.tables import (
    ModelPolicyPublic,
    ModelPolicyUpdate,
    RetrainingRequestPublic,
)
from edgefleet.control_plane.drift import retraining as service
from edgefleet.control_plane.drift.hook_config import RetrainHookPublic
from edgefleet.control_plane.services.audit import record_audit

router = APIRouter(tags=["retraining"])


@router.get("/retraining")
def list_retraining_requests(
    session: SessionDep, model: str | None = None
) -> list[RetrainingRequestPublic]:
    return [
        RetrainingRequestPublic.model_validate(r)
        for r in service.list_requests(session=session, model=model)
    ]


@router.get("/retraining/{request_id}")
def read_retraining_request(session: SessionDep, request_id: DbId) -> RetrainingRequestPublic:
    return RetrainingRequestPublic.model_validate(
        service.get_request(session=session, request_id=request_id)
    )


@router.post(
    "/retraining", status_code=201, responses={404: {"description": "no such model version"}}
)
def request_retraining(
    session: SessionDep,
    principal: PrincipalDep,
    model: Annotated[str, Body(embed=True, max_length=64)],
    version: Annotated[str, Body(embed=True, max_length=64)],
    reason: Annotated[str, Body(embed=True, max_length=500)] = "requested by an operator",
) -> RetrainingRequestPublic:
    """Open a retraining request by hand for a registered model version (the policy
    decides whether it needs approval); the caller's token is its requester."""
    return RetrainingRequestPublic.model_validate(
        service.request_retraining(
            session=session,
            model=model,
            version=version,
            reason=reason,
            requested_by=principal.name,
            requested_by_token_id=principal.token_id,
        )
    )


@router.post("/retraining/{request_id}/approve")
def approve_retraining(
    session: SessionDep, actor: ActorDep, request_id: DbId
) -> RetrainingRequestPublic:
    """Approve (recorded under the caller's token); the drift loop's next tick runs it."""
    decided = service.decide(session=session, request_id=request_id, approve=True, by=actor)
    record_audit(
        session=session,
        actor=actor,
        action="retraining.approve",
        target=f"request {request_id}",
        reason=decided.detail.get("trigger_reason"),
    )
    session.commit()
    return RetrainingRequestPublic.model_validate(decided)


@router.post("/retraining/{request_id}/reject")
def reject_retraining(
    session: SessionDep,
    actor: ActorDep,
    request_id: DbId,
    reason: Annotated[str | None, Body(embed=True)] = None,
) -> RetrainingRequestPublic:
    decided = service.decide(
        session=session, request_id=request_id, approve=False, by=actor, reason=reason
    )
    record_audit(
        session=session,
        actor=actor,
        action="retraining.reject",
        target=f"request {request_id}",
        reason=reason,
    )
    session.commit()
    return RetrainingRequestPublic.model_validate(decided)


@router.get("/policies/{model}")
def read_policy(session: SessionDep, model: str) -> ModelPolicyPublic:
    return ModelPolicyPublic.model_validate(service.get_policy(session=session, model=model))


@router.patch("/policies/{model}")
def update_policy(
    session: SessionDep,
    settings: SettingsDep,
    actor: ActorDep,
    model: str,
    update: ModelPolicyUpdate,
) -> ModelPolicyPublic:
    """Change the fields given; the others keep their value. ``hook`` names one of
    the hooks listed at ``/hooks``."""
    policy = service.set_policy(
        session=session, model=model, update=update, hooks=settings.retraining_hooks
    )
    record_audit(
        session=session,
        actor=actor,
        action="policy.set",
        target=model,
        detail=update.model_dump(mode="json", exclude_unset=True),
    )
    session.commit()
    return ModelPolicyPublic.model_validate(policy)


@router.get("/hooks")
def list_hooks(settings: SettingsDep) -> list[RetrainHookPublic]:
    """The retraining hooks an admin defined on this control plane (names and kinds only)."""
    return [
        RetrainHookPublic(
            name=name, kind=spec.kind, description=spec.description, timeout_s=spec.timeout_s
        )
        for name, spec in sorted(settings.retraining_hooks.items())
    ]
