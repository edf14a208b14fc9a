"""API tokens (admin only): issue, list, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body
from sqlmodel import col, select

from edgefleet.control_plane.api.deps import ActorDep, DbId, SessionDep
from edgefleet.control_plane.core.auth import (
    TOKEN_NAME_PATTERN,
    ApiToken,
    ApiTokenPublic,
    Role,
    issue_token,
)
from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.services.audit import record_audit

router = APIRouter(prefix="/tokens", tags=["tokens"])

MAX_EXPIRY_S = 10 * 365 * 86_400


@router.post("", status_code=201, responses={409: {"description": "the name is taken"}})
def create_token(
    session: SessionDep,
    actor: ActorDep,
    name: Annotated[str, Body(embed=True, pattern=TOKEN_NAME_PATTERN)],
    role: Annotated[Role, Body(embed=True)],
    expires_in_s: Annotated[
        int | None,
        Body(embed=True, ge=60, le=MAX_EXPIRY_S, description="seconds until the token expires"),
    ] = None,
) -> dict[str, Any]:
    """Issue a token; its secret is in this response only. Names are unique."""
    token, secret = issue_token(
        session=session,
        name=name,
        role=role,
        expires_in=timedelta(seconds=expires_in_s) if expires_in_s is not None else None,
    )
    record_audit(
        session=session,
        actor=actor,
        action="token.create",
        target=name,
        detail={"role": role, "token_id": token.id, "expires_at": _iso(token)},
    )
    session.commit()
    return {**ApiTokenPublic.model_validate(token).model_dump(mode="json"), "token": secret}


def _iso(token: ApiToken) -> str | None:
    return token.expires_at.isoformat() if token.expires_at is not None else None


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
    record_audit(
        session=session,
        actor=actor,
        action="token.revoke",
        target=token.name,
        detail={"token_id": token.id},
    )
    session.commit()
    session.refresh(token)
    return ApiTokenPublic.model_validate(token)
