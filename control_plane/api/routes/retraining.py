"""Retraining requests from the drift loop, and the per-model policy that governs them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from control_plane.api.deps import ActorDep, DbId, SessionDep
from control_plane.models import (
    ModelPolicyPublic,
    ModelPolicyUpdate,
    RetrainingRequestPublic,
)
from control_plane.services import retraining as service
from control_plane.services.audit import record_audit

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


@router.post("/retraining", status_code=201)
def request_retraining(
    session: SessionDep,
    model: Annotated[str, Body(embed=True)],
    version: Annotated[str, Body(embed=True)],
    reason: Annotated[str, Body(embed=True)] = "requested by an operator",
) -> RetrainingRequestPublic:
    """Open a retraining request by hand (the policy decides whether it needs approval)."""
    return RetrainingRequestPublic.model_validate(
        service.create_request(
            session=session, model=model, from_version=version, trigger="manual", reason=reason
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


@router.put("/policies/{model}")
def write_policy(
    session: SessionDep, actor: ActorDep, model: str, update: ModelPolicyUpdate
) -> ModelPolicyPublic:
    policy = service.set_policy(session=session, model=model, update=update)
    record_audit(
        session=session,
        actor=actor,
        action="policy.set",
        target=model,
        detail=update.model_dump(mode="json"),
    )
    session.commit()
    return ModelPolicyPublic.model_validate(policy)
