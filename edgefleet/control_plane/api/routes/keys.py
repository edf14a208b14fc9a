"""The repository's signing keys: list, rotate, revoke (each publishes a new root)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body

from edgefleet.control_plane.api.deps import ActorDep, RepositoryDep, SessionDep
from edgefleet.control_plane.services.audit import record_audit

router = APIRouter(prefix="/keys", tags=["keys"])

Role = Literal["root", "targets", "snapshot", "timestamp"]


@router.get("")
def list_keys(repository: RepositoryDep) -> list[dict[str, Any]]:
    """Per role: threshold, key ids, whether each key can sign here, metadata expiry."""
    return repository.keys_summary()


@router.post("/rotate")
def rotate_key(
    repository: RepositoryDep,
    session: SessionDep,
    actor: ActorDep,
    role: Annotated[Role, Body(embed=True)],
    keyid: Annotated[str | None, Body(embed=True)] = None,
) -> dict[str, Any]:
    """Replace a key of ``role``; devices follow through the new root version."""
    entry = repository.rotate_key(role, keyid)
    record_audit(
        session=session,
        actor=actor,
        action="key.rotate",
        target=role,
        detail={"new_keyid": entry.keyid, "old_keyid": keyid},
    )
    session.commit()
    return {"role": entry.role, "keyid": entry.keyid, "keys": repository.keys_summary()}


@router.post("/revoke")
def revoke_key(
    repository: RepositoryDep,
    session: SessionDep,
    actor: ActorDep,
    keyid: Annotated[str, Body(embed=True)],
) -> dict[str, Any]:
    """Remove a key from its role (refused below the role's threshold)."""
    entry = repository.revoke_key(keyid)
    record_audit(
        session=session,
        actor=actor,
        action="key.revoke",
        target=entry.role,
        detail={"keyid": entry.keyid},
    )
    session.commit()
    return {"role": entry.role, "keyid": entry.keyid, "revoked": True}
