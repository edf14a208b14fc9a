from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.control_plane.api.deps import SessionDep
from edgefleet.control_plane.core.tables import AuditEntryPublic
from edgefleet.control_plane.services.audit import list_audit

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def read_audit(
    session: SessionDep,
    rollout_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=5_000)] = 200,
) -> list[AuditEntryPublic]:
    """Audit entries, newest first."""
    entries = list_audit(session=session, rollout_id=rollout_id, action=action, limit=limit)
    return [AuditEntryPublic.model_validate(e) for e in entries]
