"""Device enrolment (open, one-time token, rate-limited) and revocation (operator)."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status

from edgefleet.control_plane.api.deps import SessionDep, SettingsDep
from edgefleet.control_plane.broker.security import BrokerAuthFiles
from edgefleet.control_plane.core.auth import authenticate
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import (
    DeviceCredentialPublic,
    EnrolmentTokenCreate,
    EnrolmentTokenIssued,
    EnrolRequest,
    EnrolResponse,
)
from edgefleet.control_plane.services import enrolment as service
from edgefleet.control_plane.trust.pki import IssuingCa, PkiError

router = APIRouter(tags=["enrolment"])


def require_operator(request: Request) -> None:
    """Operator role for issuing enrolment tokens.

    ``/api/v1/enrol...`` is an open prefix in ``edgefleet.control_plane.core.auth`` (devices enrol
    without an API token), which also opens ``/api/v1/enrolment/...``: this route
    checks the caller's token itself rather than rely on the prefix table.
    """
    settings: Settings = request.app.state.settings
    if settings.api_auth:
        request.state.principal = authenticate(request, "operator")


def auth_files(settings: SettingsDep) -> BrokerAuthFiles:
    """The secured broker's files; 409 when this control plane runs an anonymous broker."""
    if settings.broker_auth_dir is None:
        raise HTTPException(409, "enrolment needs a secured broker (EDGEFLEET_BROKER_AUTH_DIR)")
    return BrokerAuthFiles(settings.broker_auth_dir)


def issuing_ca(settings: SettingsDep) -> IssuingCa | None:
    """The CA that signs devices' CSRs (TLS broker), or None when devices get passwords."""
    if settings.pki_dir is None:
        return None
    try:
        return IssuingCa.load(settings.pki_dir, passphrase=settings.key_passphrase_bytes)
    except PkiError as e:
        raise HTTPException(503, f"certificate authority unavailable: {e}") from e


def rate_limit(request: Request, settings: SettingsDep) -> None:
    """429 once a client address has used its burst; every attempt counts, good or bad.

    The address is the TCP peer's; uvicorn replaces it with ``X-Forwarded-For`` only
    for peers listed in ``EDGEFLEET_FORWARDED_ALLOW_IPS`` (``app.server_options``).
    """
    limiter: service.RateLimiter | None = getattr(request.app.state, "enrol_limiter", None)
    if limiter is None:
        limiter = service.RateLimiter(
            rate_per_s=settings.enrol_rate_per_minute / 60.0, burst=settings.enrol_burst
        )
        request.app.state.enrol_limiter = limiter
    key = request.client.host if request.client else "unknown"
    if not limiter.allow(key):
        wait = math.ceil(limiter.retry_after(key))
        raise HTTPException(429, "too many enrolment attempts", {"Retry-After": str(wait)})


AuthFilesDep = Annotated[BrokerAuthFiles, Depends(auth_files)]
IssuingCaDep = Annotated[IssuingCa | None, Depends(issuing_ca)]


@router.post(
    "/enrolment/tokens",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_operator)],
)
def create_enrolment_token(session: SessionDep, body: EnrolmentTokenCreate) -> EnrolmentTokenIssued:
    return service.create_token(session=session, ttl_seconds=body.ttl_seconds, note=body.note)


@router.post(
    "/enrol",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(rate_limit)],
    responses={403: {"description": "token invalid, used or expired"}, 429: {}},
)
def enrol(
    session: SessionDep, files: AuthFilesDep, issuer: IssuingCaDep, body: EnrolRequest
) -> EnrolResponse:
    try:
        return service.enrol_device(session=session, files=files, request=body, issuer=issuer)
    except service.EnrolmentRefusedError as e:
        raise HTTPException(403, str(e)) from e


@router.post("/devices/{device_id}/revoke")
def revoke_device(
    session: SessionDep, files: AuthFilesDep, issuer: IssuingCaDep, device_id: str
) -> DeviceCredentialPublic:
    credential = service.revoke_device(
        session=session, files=files, device_id=device_id, issuer=issuer
    )
    return DeviceCredentialPublic.model_validate(credential)
