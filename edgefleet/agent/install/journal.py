"""The install journal: the install state machine as data, recorded on disk before acting.

One install at a time is tracked in ``journal.json`` (written with ``atomic_write``:
temp file, fsync, rename, fsync the directory), so a power cut leaves either the
previous record or the new one. The machine itself (``TRANSITIONS``, ``RESUME``) is
data in ``edgefleet.states.install``, shared with the reports and the control plane.
A state is recorded *before* the work it names starts.

On start-up ``RESUME`` says where each saved state continues; every state not in
it rolls back. Before the switch (``active``) a roll-back only discards the
staged slot; from ``active`` it switches ``active.json`` back to the other slot.
Every save bumps ``saves`` and every start-up in a non-terminal state bumps
``restarts``: a crash loop ends in a clean roll-back instead of forever.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec
from msgspec import field

from edgefleet import schema
from edgefleet.agent.errors import JournalError
from edgefleet.fileio import atomic_write
from edgefleet.maintenance import MaintenanceWindow
from edgefleet.states.install import (
    ABORT_EVENTS,
    RESUME,
    TERMINAL,
    TRANSITIONS,
    InstallEvent,
    InstallState,
    abort_event,
)

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.json"
CRASH_HOOK_ENV = "EDGEFLEET_AGENT_CRASH_AT"
"""Fault-injection hook for tests: ``EDGEFLEET_AGENT_CRASH_AT=<state>[@<bundle_id>]`` makes
the agent ``os._exit(137)`` right after recording that state (of that bundle only, when
given), as a kill -9 or power cut would. Unset in production."""

MAX_SAVES = 64
MAX_RESTARTS = 3


class JournalRecord(schema.Open, frozen=True, kw_only=True):
    """One install as the journal holds it (fields a newer agent wrote are kept)."""

    bundle_id: str
    target: str
    release: int
    rollout_id: int | None = None
    state: InstallState = "offered"
    slot: str | None = None
    previous: dict[str, Any] | None = None  # active.json before the switch (for roll-back)
    reason: str | None = None
    maintenance_window: MaintenanceWindow | None = None  # from the offer: when to switch
    atomic: bool = False  # from the offer: wait ``armed`` for the signed switch order
    history: list[InstallState] = field(default_factory=list)
    saves: int = 0
    restarts: int = 0
    updated_at: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        """The install ended (``TERMINAL``): nothing to resume or roll back."""
        return self.state in TERMINAL


def next_state(state: InstallState, event: InstallEvent) -> InstallState:
    """Look ``(state, event)`` up in ``TRANSITIONS``; ``JournalError`` if not allowed."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise JournalError(f"no transition from {state} on {event}") from None


class Journal:
    """``journal.json`` under the data dir: read, fire events, crash-safe writes."""

    def __init__(self, data_dir: Path, *, max_saves: int = MAX_SAVES) -> None:
        self.path = Path(data_dir) / JOURNAL_FILE
        self.max_saves = max_saves

    def read(self) -> JournalRecord | None:
        """The last recorded install, or None; an unreadable journal is treated as none."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return schema.decode_json(data, JournalRecord)
        except msgspec.DecodeError as e:
            logger.error(
                "journal unreadable, ignoring it path=%s reason=%s", self.path, schema.describe(e)
            )
            return None

    def begin(self, record: JournalRecord) -> JournalRecord:
        """Record a new install in state ``offered``, replacing the previous record.

        Returns:
            The record as saved: state ``offered``, history and save count restarted.
        """
        fresh = schema.replace(record, state="offered", history=["offered"], saves=0)
        return self._save(fresh)

    def fire(self, record: JournalRecord, event: InstallEvent, **update: Any) -> JournalRecord:
        """Move ``record`` along ``event`` and record it before the caller acts on it.

        Past ``max_saves`` the machine is in a loop: the event becomes ``error``
        (or ``breach`` once switched) so the install ends instead.

        Args:
            record: the install as last saved (what ``begin`` or ``fire`` returned).
            event: what happened.
            **update: other fields to record with the new state (``slot``,
                ``reason``, ``previous``...).

        Returns:
            The record as saved, in its new state.

        Raises:
            JournalError: ``TRANSITIONS`` has no ``(record.state, event)``.
            OSError: the journal cannot be written; nothing was recorded.
        """
        if record.saves + 1 > self.max_saves and event not in ABORT_EVENTS:
            logger.error("journal save limit reached bundle_id=%s", record.bundle_id)
            event = abort_event(record.state)
            update["reason"] = f"install looped: more than {self.max_saves} journal saves"
        state = next_state(record.state, event)
        return self._save(
            schema.replace(
                record, **{**update, "state": state, "history": [*record.history, state]}
            )
        )

    def note_restart(self, record: JournalRecord) -> JournalRecord:
        """Count a start-up that found ``record`` unfinished."""
        return self._save(schema.replace(record, restarts=record.restarts + 1))

    def clear_restarts(self, record: JournalRecord) -> JournalRecord:
        """Forget the restarts counted so far: ``record`` resumed cleanly (a deferred
        install whose staged slot checked out again), so a restart is no crash loop."""
        return self._save(schema.replace(record, restarts=0))

    def _save(self, record: JournalRecord) -> JournalRecord:
        record = schema.replace(record, saves=record.saves + 1, updated_at=time.time())
        payload = json.dumps(schema.to_builtins(record), sort_keys=True).encode()
        atomic_write(self.path, payload + b"\n")
        logger.info(
            "journal state=%s bundle_id=%s saves=%d", record.state, record.bundle_id, record.saves
        )
        hook = os.environ.get(CRASH_HOOK_ENV)
        if hook and hook in (record.state, f"{record.state}@{record.bundle_id}"):
            logger.warning("fault injection: exiting after recording state=%s", record.state)
            logging.shutdown()
            os._exit(137)
        return record


def resume_action(record: JournalRecord, *, max_restarts: int = MAX_RESTARTS) -> str:
    """Start-up action for ``record``: none, reinstall, await_switch, probation or rollback.

    Args:
        record: the journal's record, its restart already counted (``note_restart``).
        max_restarts: restarts in an unfinished state beyond which it rolls back.

    Returns:
        ``"none"`` for a finished install; ``"reinstall"``, ``"await_switch"`` or
        ``"probation"`` where
        ``RESUME`` says the state continues; ``"rollback"`` otherwise, and for a
        crash loop.
    """
    if record.finished:
        return "none"
    if record.restarts > max_restarts:
        return "rollback"
    return RESUME.get(record.state, "rollback")
