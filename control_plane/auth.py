"""API tokens with roles, checked on every route.

Roles are ordered: ``viewer`` reads, ``operator`` changes the fleet (models,
bundles, rollouts, retraining, policies), ``admin`` also manages signing keys and
tokens. A token is shown once when issued; only its SHA-256 is stored. On first
start, with no token in the database, an admin token is issued and written to
``<data_dir>/admin.token`` (mode 0600) so the operator can get in.

Health, the trust root (public metadata devices are given) and the OpenAPI docs
need no token; device enrolment has its own one-time tokens.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fastapi import HTTPException, Request
from sqlmodel import Field, Session, SQLModel, select

from control_plane.models import utcnow
from control_plane.settings import Settings
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "admin"]
RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
ADMIN_PATHS = ("/api/v1/keys", "/api/v1/tokens")
OPEN_PATHS = frozenset({"/api/v1/health", "/api/v1/trust/root", "/api/v1/enrol"})
TOKEN_PREFIX = "eft_"


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    role: str = Field(max_length=16)
    token_sha256: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    revoked: bool = False


class ApiTokenPublic(SQLModel):
    id: int
    name: str
    role: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True)
class Principal:
    """Who is calling: what the audit log records as 'who'."""

    name: str
    role: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(*, session: Session, name: str, role: Role) -> tuple[ApiToken, str]:
    """A new token; the secret is returned once and never stored."""
    if role not in RANK:
        raise ValueError(f"unknown role {role!r}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role, token_sha256=_digest(secret))
    session.add(token)
    session.commit()
    session.refresh(token)
    logger.info("api token issued name=%s role=%s", name, role)
    return token, secret


def ensure_admin_token(*, session: Session, settings: Settings) -> None:
    """On a fresh database, issue the first admin token into ``admin.token``."""
    if session.exec(select(ApiToken)).first() is not None:
        return
    _token, secret = issue_token(session=session, name="bootstrap-admin", role="admin")
    atomic_write(settings.data_dir / "admin.token", secret.encode(), mode=0o600)
    logger.warning("first admin token written path=%s", settings.data_dir / "admin.token")


def required_role(method: str, path: str) -> Role | None:
    """The least role a request needs; None when the route is open."""
    if not path.startswith("/api/v1/") or path.rstrip("/") in OPEN_PATHS:
        return None
    if path.startswith(ADMIN_PATHS):
        return "admin"
    return "viewer" if method in ("GET", "HEAD", "OPTIONS") else "operator"


def authorize(request: Request) -> Principal:
    """FastAPI dependency on every API router: 401 without a valid token, 403 below the role."""
    settings: Settings = request.app.state.settings
    needed = required_role(request.method, request.url.path)
    if not settings.api_auth:
        principal = Principal("auth-disabled", "admin")
    elif needed is None:
        principal = Principal("anonymous", "viewer")
    else:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        with Session(request.app.state.engine) as session:
            token = session.exec(
                select(ApiToken).where(ApiToken.token_sha256 == _digest(secret.strip()))
            ).first()
        if token is None or token.revoked:
            raise HTTPException(401, "invalid or revoked token", {"WWW-Authenticate": "Bearer"})
        principal = Principal(token.name, token.role)
        if RANK[token.role] < RANK[needed]:
            raise HTTPException(403, f"{needed} role required; token {token.name} is {token.role}")
    request.state.principal = principal
    return principal
