"""Errors of the shared contract, grouped by who is at fault.

::

    EdgefleetError
    ├── FieldError          a record built in code with a value its field does not allow
    │                       (also a ValueError)
    ├── MessageError        a wire message that cannot be decoded or validated
    ├── BundleError         a bundle whose archive, manifest or files do not check out
    ├── ProfileError        a firmware profile that does not match its schema
    ├── TransportError      the MQTT link failed (not connected, timed out, refused)
    │   └── FetchError      a remote file could not be fetched (carries the status)
    ├── TransitionError     a state machine was asked for a move its table does not allow
    └── WindowError         a maintenance window that cannot be read (cron, time zone)

Each error carries its fields as attributes so callers can report them without
parsing strings.
"""

from __future__ import annotations

from typing import Literal


class EdgefleetError(Exception):
    """Base class of every error the shared contract raises."""


class FieldError(EdgefleetError, ValueError):
    """A record was given a value its field does not allow; ``field`` is its dotted path.

    Raised when a record is built in code, and by a record's own checks; decoding
    reports the same through msgspec's ``ValidationError`` (see ``edgefleet.schema``).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


MessageFault = Literal["invalid", "too_large", "too_deep"]


class MessageError(EdgefleetError):
    """A wire message was malformed, of an unknown type, or failed validation.

    ``fault`` sorts it for counting: ``too_large`` and ``too_deep`` are refused before
    decoding, ``invalid`` is everything the decoder or the schema refused.
    """

    def __init__(
        self, reason: str, *, topic: str | None = None, fault: MessageFault = "invalid"
    ) -> None:
        super().__init__(reason if topic is None else f"{reason} (topic={topic})")
        self.reason = reason
        self.topic = topic
        self.fault = fault


class BundleError(EdgefleetError):
    """A bundle failed a check; ``file`` names the member at fault when there is one."""

    def __init__(self, reason: str, *, file: str | None = None) -> None:
        super().__init__(reason if file is None else f"{file}: {reason}")
        self.reason = reason
        self.file = file


class ProfileError(EdgefleetError):
    """A firmware profile was refused; ``field`` names the offending field."""

    def __init__(self, reason: str, *, field: str | None = None, profile: str | None = None):
        where = ".".join(p for p in (profile, field) if p)
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.field = field
        self.profile = profile


class TransportError(EdgefleetError):
    """The MQTT link could not carry a message (disconnected, timed out, refused)."""


class FetchError(TransportError):
    """A fetch over MQTT request/response failed; ``status`` follows HTTP codes."""

    def __init__(self, reason: str, *, path: str, status: int | None = None) -> None:
        super().__init__(f"{path}: {reason}" + (f" (status {status})" if status else ""))
        self.reason = reason
        self.path = path
        self.status = status


class TransitionError(EdgefleetError):
    """A state machine of ``edgefleet.states`` has no move from ``state`` on ``trigger``.

    ``machine`` names the vocabulary (``rollout``, ``install``); the caller decides
    what the refusal means for its own callers (the control plane answers 409).
    """

    def __init__(self, machine: str, state: str, trigger: str) -> None:
        super().__init__(f"{machine} in state {state} does not allow {trigger}")
        self.machine = machine
        self.state = state
        self.trigger = trigger


class WindowError(EdgefleetError):
    """A maintenance window that cannot be read: a cron expression outside the dialect
    ``edgefleet.maintenance`` reads, an unknown time zone, or a cron that never fires."""
