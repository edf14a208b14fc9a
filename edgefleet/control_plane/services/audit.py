"""The audit log: every operator action and automatic rollout decision.

``record_audit`` only adds the entry to the caller's session, so the entry commits
(or rolls back) together with the change it explains. Beside the actor's name it
records the id of the API token that acted: given, or taken from the principal an
API request's session carries (``api.deps.get_session``) when the names match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import AuditEntry

logger = logging.getLogger(__name__)


def record_audit(
    *,
    session: Session,
    actor: str,
    action: str,
    reason: str | None = None,
    rollout_id: int | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    actor_token_id: int | None = None,
) -> AuditEntry:
    """Add an audit entry to ``session``; the caller's commit records it with its change.

    Args:
        session: the caller's session; not committed here.
        actor: who acted: an operator's or token's name, or ``"system"``.
        action: what was done, dotted (``rollout.abort``, ``group.set``...).
        reason: why, as the actor gave it.
        rollout_id: the rollout concerned, if any.
        target: what else was acted on (a device id, a group name...).
        detail: anything more, stored as JSON.
        actor_token_id: the API token that acted; None takes it from the session's
            principal when its name is ``actor``.

    Returns:
        The entry, added but not yet committed.
    """
    if actor_token_id is None:
        principal = session.info.get("principal")
        if principal is not None and getattr(principal, "name", None) == actor:
            actor_token_id = getattr(principal, "token_id", None)
    entry = AuditEntry(
        actor=actor,
        actor_token_id=actor_token_id,
        action=action,
        reason=reason,
        rollout_id=rollout_id,
        target=target,
        detail=detail or {},
    )
    session.add(entry)
    logger.info(
        "audit actor=%s token_id=%s action=%s rollout_id=%s target=%s reason=%s",
        actor,
        actor_token_id,
        action,
        rollout_id,
        target,
        reason,
    )
    return entry


def list_audit(
    *,
    session: Session,
    rollout_id: int | None = None,
    action: str | None = None,
    limit: int = 200,
) -> Sequence[AuditEntry]:
    """The newest ``limit`` audit entries, newest first.

    Args:
        rollout_id: only this rollout's entries; None for all.
        action: only entries of this action; None for all.
        limit: at most this many entries.
    """
    query = select(AuditEntry)
    if rollout_id is not None:
        query = query.where(AuditEntry.rollout_id == rollout_id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    return session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit)).all()
