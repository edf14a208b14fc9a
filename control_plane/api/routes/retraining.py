"""Retraining requests from the drift loop, and the per-model policy that governs them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from control_plane.api.deps import DbId, SessionDep
from control_plane.models import (
    ModelPolicyPublic,
    ModelPolicyUpdate,
    RetrainingRequestPublic,
)
from control_plane.services import retraining as service

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
    session: SessionDep, request_id: DbId, by: Annotated[str, Body(embed=True)] = "operator"
) -> RetrainingRequestPublic:
    """Approve; the drift loop's next tick runs the request."""
    return RetrainingRequestPublic.model_validate(
        service.decide(session=session, request_id=request_id, approve=True, by=by)
    )


@router.post("/retraining/{request_id}/reject")
def reject_retraining(
    session: SessionDep,
    request_id: DbId,
    by: Annotated[str, Body(embed=True)] = "operator",
    reason: Annotated[str | None, Body(embed=True)] = None,
) -> RetrainingRequestPublic:
    return RetrainingRequestPublic.model_validate(
        service.decide(session=session, request_id=request_id, approve=False, by=by, reason=reason)
    )


@router.get("/policies/{model}")
def read_policy(session: SessionDep, model: str) -> ModelPolicyPublic:
    return ModelPolicyPublic.model_validate(service.get_policy(session=session, model=model))


@router.put("/policies/{model}")
def write_policy(session: SessionDep, model: str, update: ModelPolicyUpdate) -> ModelPolicyPublic:
    return ModelPolicyPublic.model_validate(
        service.set_policy(session=session, model=model, update=update)
    )
