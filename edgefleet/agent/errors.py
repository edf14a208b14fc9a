"""Errors the agent raises, grouped by what went wrong.

::

    AgentError
    ├── ConfigError         the agent's TOML config is missing or invalid (names the field)
    ├── SlotError           active.json or a slot directory cannot be read or trusted
    ├── RuntimeLoadError    the model runtime could not load a bundle's model
    ├── JournalError        an install-journal transition the state table does not allow
    ├── SpoolError          the telemetry spool database cannot be opened or written
    ├── TransferError       a repository file could not be fetched over MQTT
    └── InstallError        an offered bundle was refused; ``reason`` goes in the report
        ├── SmokeTestError  the installed model gave wrong answers on the smoke test
        ├── DiskBudgetError a write would not fit its share of the disk budget or the disk
        └── VerificationError  TUF refused the signed metadata or the bundle's bytes

The contract's ``BundleError`` passes through unchanged; the installer turns it and
every ``InstallError`` into a ``failed`` report. TUF's own exceptions never leave
``edgefleet.agent.verification.tuf_client``: they arrive here as ``VerificationError`` or
``TransferError``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error the agent raises."""


class ConfigError(AgentError):
    """The config file is missing, not TOML, or fails validation."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


class SlotError(AgentError):
    """The record of the active slot is unreadable or inconsistent."""


class RuntimeLoadError(AgentError):
    """A model could not be loaded (unknown runtime, bad model, signature mismatch)."""


class JournalError(AgentError):
    """An event that the install state table does not allow in the current state."""


class SpoolError(AgentError):
    """The telemetry spool cannot be used (its database is unreadable or unwritable)."""


class TransferError(AgentError):
    """A repository file could not be fetched; ``status`` when the repository refused it.

    Without a status the transfer broke (no answer, broker gone) and may be resumed;
    with one (404, 400...) the repository answered and asking again will not help.
    """

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class InstallError(AgentError):
    """An install was refused; ``reason`` is what the failed report says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DiskBudgetError(InstallError):
    """A write would not fit: ``use`` names the share (``slots``, ``staging``, ...) or
    ``disk`` for the filesystem's free space; ``need`` and ``room`` are bytes."""

    def __init__(self, reason: str, *, use: str, need: int, room: int) -> None:
        super().__init__(reason)
        self.use = use
        self.need = need
        self.room = room


class SmokeTestError(InstallError):
    """The smoke test failed; ``output`` names the output that disagreed."""

    def __init__(self, reason: str, *, output: str | None = None) -> None:
        super().__init__(reason)
        self.output = output


class VerificationError(InstallError):
    """TUF refused the offer's target: metadata or bundle bytes not as signed.

    ``error`` names python-tuf's exception (``BadSignatureError``,
    ``LengthOrHashMismatchError``, ...), which also heads ``reason``.
    """

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
