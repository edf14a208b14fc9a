"""API tokens (admin only): issue, list, revoke."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from sqlmodel import col, select

from control_plane.api.deps import ActorDep, DbId, SessionDep
from control_plane.auth import ApiToken, ApiTokenPublic, Role, issue_token
from control_plane.errors import NotFoundError
from control_plane.services.audit import record_audit

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201)
def create_token(
    session: SessionDep,
    actor: ActorDep,
    name: Annotated[str, Body(embed=True, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")],
    role: Annotated[Role, Body(embed=True)],
) -> dict[str, Any]:
    """Issue a token; its secret is in this response only."""
    token, secret = issue_token(session=session, name=name, role=role)
    record_audit(
        session=session, actor=actor, action="token.create", target=name, detail={"role": role}
    )
    session.commit()
    return {**ApiTokenPublic.model_validate(token).model_dump(mode="json"), "token": secret}


@router.get("")
def list_tokens(session: SessionDep) -> list[ApiTokenPublic]:
    tokens = session.exec(select(ApiToken).order_by(col(ApiToken.id))).all()
    return [ApiTokenPublic.model_validate(t) for t in tokens]


@router.post("/{token_id}/revoke")
def revoke_token(session: SessionDep, actor: ActorDep, token_id: DbId) -> ApiTokenPublic:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFoundError(f"token {token_id} not found")
    token.revoked = True
    session.add(token)
    record_audit(session=session, actor=actor, action="token.revoke", target=token.name)
    session.commit()
    session.refresh(token)
    return ApiTokenPublic.model_validate(token)
