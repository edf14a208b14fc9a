"""How the fleet link tells a message's own fault from a failure of the database.

Shared by the link's handlers and by telemetry ingest (which may run in a process of
its own, so this stays free of the link's heavier imports).
"""

from __future__ import annotations

from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from edgefleet.errors import MessageError

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
