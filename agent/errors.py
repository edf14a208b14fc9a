"""Errors the agent raises, grouped by what went wrong.

::

    AgentError
    ├── ConfigError         the agent's TOML config is missing or invalid (names the field)
    ├── SlotError           active.json or a slot directory cannot be read or trusted
    ├── RuntimeLoadError    the model runtime could not load a bundle's model
    ├── JournalError        an install-journal transition the state table does not allow
    ├── SpoolError          the telemetry spool database cannot be opened or written
    └── InstallError        an offered bundle was refused; ``reason`` goes in the report
        └── SmokeTestError  the installed model gave wrong answers on the smoke test

TUF's own ``RepositoryError`` / ``DownloadError`` and the contract's ``BundleError``
pass through unchanged; the installer turns all of them into a ``failed`` report.
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


class InstallError(AgentError):
    """An install was refused; ``reason`` is what the failed report says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SmokeTestError(InstallError):
    """The smoke test failed; ``output`` names the output that disagreed."""

    def __init__(self, reason: str, *, output: str | None = None) -> None:
        super().__init__(reason)
        self.output = output
