"""API tokens with roles, checked on every route.

Roles are ordered: ``viewer`` reads, ``operator`` changes the fleet (models,
bundles, rollouts, retraining, policies) and reads devices' logs, ``admin`` also
manages signing keys and tokens. A token is shown once when issued; only its SHA-256
is stored. On first start, with no token in the database, an admin token is issued
and written to ``<data_dir>/admin.token`` (mode 0600) so the operator can get in.

Health, the trust root (public metadata devices are given) and the OpenAPI docs
need no token; device enrolment has its own one-time tokens.

Token names are unique (the audit log names who acted, beside the token's id), and
the names the system itself acts under (``drift-loop``, ``system``, anything
starting ``system`` or ``edgefleet``) are refused. A token may carry an expiry;
past it the token fails authentication like a revoked one, saying so.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import HTTPException, Request
from sqlalchemy import DateTime
from sqlmodel import Field, Session, SQLModel, select

from edgefleet.control_plane.core.errors import ConflictError, InvalidRequestError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import utcnow
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "admin"]
RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
ADMIN_PATHS = ("/api/v1/keys", "/api/v1/tokens", "/api/v1/agent-releases")
"""Admin only: key material, tokens, and the agent's own code (it runs every device)."""
OPERATOR_READS = (
    re.compile(r"^/api/v1/devices/[^/]+/logs/?$"),
    re.compile(r"^/api/v1/models/[^/]+/field-data/?$"),
)
"""Reads that need the operator role: a device's own log, and the inputs devices saw,
are more than fleet state."""
OPEN_PATHS = frozenset({"/api/v1/health", "/api/v1/trust/root", "/api/v1/enrol"})
TOKEN_PREFIX = "eft_"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
BOOTSTRAP_NAME = "bootstrap-admin"
RESERVED_NAMES = frozenset({"drift-loop", "auth-disabled", "anonymous", BOOTSTRAP_NAME})
RESERVED_PREFIXES = ("system", "edgefleet", "drift-loop", "cp-")
"""Names the control plane acts or connects under itself; no API token may take them."""


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    token_sha256: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    revoked: bool = False


class ApiTokenPublic(SQLModel):
    id: int
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool


@dataclass(frozen=True)
class Principal:
    """Who is calling: what the audit log records as 'who' (name and token id)."""

    name: str
    role: str
    token_id: int | None = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(ts: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive; they were stored in UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def is_reserved_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in RESERVED_NAMES or lowered.startswith(RESERVED_PREFIXES)


def issue_token(
    *,
    session: Session,
    name: str,
    role: Role,
    expires_in: timedelta | None = None,
    allow_reserved: bool = False,
) -> tuple[ApiToken, str]:
    """A new token; the secret is returned once and never stored.

    ``InvalidRequestError`` for a reserved or malformed name, ``ConflictError`` when
    a token (revoked ones included) already has the name.
    """
    if role not in RANK:
        raise InvalidRequestError(f"unknown role {role!r}")
    if not re.fullmatch(TOKEN_NAME_PATTERN, name):
        raise InvalidRequestError(f"token names match {TOKEN_NAME_PATTERN}")
    if is_reserved_name(name) and not allow_reserved:
        raise InvalidRequestError(
            f"token name {name!r} is reserved for the control plane's own actions"
        )
    taken = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if taken is not None:
        raise ConflictError(f"a token named {name!r} already exists (id {taken.id})")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidRequestError("a token's expiry must lie in the future")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        role=role,
        token_sha256=_digest(secret),
        expires_at=utcnow() + expires_in if expires_in is not None else None,
    )
    session.add(token)
    session.commit()
    session.refresh(token)
    logger.info("api token issued name=%s role=%s token_id=%s", name, role, token.id)
    return token, secret


def ensure_admin_token(*, session: Session, settings: Settings) -> None:
    """On a fresh database, issue the first admin token into ``admin.token``."""
    if session.exec(select(ApiToken)).first() is not None:
        return
    _token, secret = issue_token(
        session=session, name=BOOTSTRAP_NAME, role="admin", allow_reserved=True
    )
    atomic_write(settings.data_dir / "admin.token", secret.encode(), mode=0o600)
    logger.warning("first admin token written path=%s", settings.data_dir / "admin.token")


def required_role(method: str, path: str) -> Role | None:
    """The least role a request needs; None when the route is open."""
    if not path.startswith("/api/v1/") or path.rstrip("/") in OPEN_PATHS:
        return None
    if path.startswith(ADMIN_PATHS):
        return "admin"
    if any(pattern.match(path) for pattern in OPERATOR_READS):
        return "operator"
    return "viewer" if method in ("GET", "HEAD", "OPTIONS") else "operator"


def authenticate(request: Request, needed: Role) -> Principal:
    """The caller's token as a ``Principal``: 401 without a valid, unexpired token, 403
    when its role is below ``needed``."""
    challenge = {"WWW-Authenticate": "Bearer"}
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPException(401, "missing bearer token", challenge)
    with Session(request.app.state.engine) as session:
        token = session.exec(
            select(ApiToken).where(ApiToken.token_sha256 == _digest(secret.strip()))
        ).first()
    if token is None or token.revoked:
        raise HTTPException(401, "invalid or revoked token", challenge)
    if token.expires_at is not None and _aware(token.expires_at) <= utcnow():
        raise HTTPException(
            401, f"token {token.name} expired at {_aware(token.expires_at).isoformat()}", challenge
        )
    if RANK[token.role] < RANK[needed]:
        raise HTTPException(403, f"{needed} role required; token {token.name} is {token.role}")
    return Principal(token.name, token.role, token.id)


def authorize(request: Request) -> Principal:
    """FastAPI dependency on every API router: 401 without a valid token, 403 below the role."""
    settings: Settings = request.app.state.settings
    needed = required_role(request.method, request.url.path)
    if not settings.api_auth:
        principal = Principal("auth-disabled", "admin")
    elif needed is None:
        principal = Principal("anonymous", "viewer")
    else:
        principal = authenticate(request, needed)
    request.state.principal = principal
    return principal
