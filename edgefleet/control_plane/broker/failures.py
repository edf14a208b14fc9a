"""How the fleet link tells a message's own fault from a failure of the database.

Shared by the link's handlers and by telemetry ingest (which may run in a process of
its own, so this stays free of the link's heavier imports).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import Session

from edgefleet.errors import MessageError

logger = logging.getLogger(__name__)

RejectionKey = tuple[str, str, str]
"""``(device_id, channel, reason)``."""


def rejection_reason(error: BaseException) -> str:
    """The reason label a refused message is counted under (a small, fixed set)."""
    return error.fault if isinstance(error, MessageError) else "failed"


def is_transient(error: BaseException) -> bool:
    """A failure of the database or the deployment, not of the message: retry it later.

    Connection trouble, a locked database, a missing table or permission — the same
    message would go through once that is fixed, so it must not be refused (and
    receipted) for good. What stays is the message's own fault: a value the database
    refuses (``DataError``, ``IntegrityError``) or an exception our code raised on it.
    """
    if isinstance(error, PoolTimeoutError):
        return True
    if isinstance(error, DBAPIError):
        systemic = OperationalError | InterfaceError | InternalError | ProgrammingError
        return error.connection_invalidated or isinstance(error, systemic | NotSupportedError)
    return False


def log_refusal(device_id: str, channel: str, topic: str, error: BaseException) -> RejectionKey:
    """Log one refused message (never its payload); the key it is counted under."""
    reason = rejection_reason(error)
    if isinstance(error, MessageError):
        logger.warning(
            "message refused device_id=%s topic=%s reason=%s detail=%s",
            device_id,
            topic,
            reason,
            error.reason,
        )
    else:
        logger.error(
            "message refused device_id=%s topic=%s reason=%s error=%s",
            device_id,
            topic,
            reason,
            type(error).__name__,
            exc_info=error,
        )
    return (device_id, channel, reason)


def count_refusals(engine: Engine, counts: Mapping[RejectionKey, int]) -> None:
    """Add refused messages to the per-device counts; a failure here is only logged:
    counting must never stop the pipeline it counts for."""
    if not counts:
        return
    from edgefleet.control_plane.services.devices import record_rejections

    try:
        with Session(engine) as session:
            record_rejections(session=session, counts=dict(counts))
    except Exception:
        logger.exception("refused messages not counted messages=%d", sum(counts.values()))
