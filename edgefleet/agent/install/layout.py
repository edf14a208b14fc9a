"""Where each hosted model's state lives on disk, and the move from the one-model layout.

An agent hosts several models side by side; each has a directory of its own under the
data dir, holding what a one-model agent kept at the top of it::

    <data_dir>/models/<name>/active.json   the slot served, the highest release installed
    <data_dir>/models/<name>/journal.json  that model's install journal
    <data_dir>/models/<name>/slots/{a,b}   that model's two slots

so an install, a roll-back or a crash of one model's install never touches another's
files, and release counters (anti-rollback) are per model name.

An agent updated in the field still has the old layout (``active.json``, ``journal.json``
and ``slots/`` at the top of the data dir): ``migrate_single_model`` moves them under
``models/<name>/`` on start, one ``os.rename`` each (same filesystem, so each move is
atomic), ``active.json`` last, so a power cut midway is finished on the next start.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import msgspec

from edgefleet import schema
from edgefleet.agent.errors import InstallError
from edgefleet.agent.install.journal import JOURNAL_FILE, JournalRecord
from edgefleet.agent.install.slots import ACTIVE_FILE, ActiveRecord, read_slot_manifest
from edgefleet.errors import BundleError

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
"""A model name that is safe as a directory name (no separators, no ``..``)."""


def check_model_name(name: str) -> str:
    """``name`` when it is usable as a model directory; ``InstallError`` otherwise."""
    if not MODEL_NAME_RE.match(name) or name in (".", ".."):
        raise InstallError(f"model name {name[:80]!r} is not usable on this device")
    return name


def model_dir(data_dir: Path, name: str) -> Path:
    """``<data_dir>/models/<name>``, the state of model ``name`` (which may not exist yet)."""
    return Path(data_dir) / MODELS_DIR / check_model_name(name)


def hosted_models(data_dir: Path) -> list[str]:
    """Names of the models with state on disk (installed, or an install under way)."""
    root = Path(data_dir) / MODELS_DIR
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    return [
        entry.name
        for entry in entries
        if entry.is_dir()
        and MODEL_NAME_RE.match(entry.name)
        and ((entry / ACTIVE_FILE).exists() or (entry / JOURNAL_FILE).exists())
    ]


def _legacy_model_name(data_dir: Path) -> str | None:
    """The model the one-model layout holds: from ``active.json``, else from the slot an
    unfinished install's journal names."""
    try:
        active = schema.decode_json((data_dir / ACTIVE_FILE).read_bytes(), ActiveRecord)
        return active.model
    except FileNotFoundError:
        pass
    except (OSError, msgspec.DecodeError) as e:
        logger.error("legacy active.json unreadable reason=%s", e)
        return None
    try:
        record = schema.decode_json((data_dir / JOURNAL_FILE).read_bytes(), JournalRecord)
    except (OSError, msgspec.DecodeError):
        return None
    if record.slot not in ("a", "b"):
        return None
    try:
        return read_slot_manifest(data_dir / "slots" / record.slot).model.name
    except BundleError:
        return None


def migrate_single_model(data_dir: Path) -> str | None:
    """Move a one-model state directory into ``models/<name>/``; returns the name moved.

    Nothing to move (a new device, or migrated already) returns None. A journal whose
    model cannot be told (an install that had not unpacked yet when the agent was
    updated) is set aside as ``journal.json.legacy``: the control plane offers again.
    """
    data_dir = Path(data_dir)
    legacy = [data_dir / name for name in ("slots", JOURNAL_FILE, ACTIVE_FILE)]
    if not any(path.exists() for path in legacy):
        return None
    name = _legacy_model_name(data_dir)
    if name is None or not MODEL_NAME_RE.match(name):
        journal = data_dir / JOURNAL_FILE
        if journal.exists() and not (data_dir / ACTIVE_FILE).exists():
            os.replace(journal, data_dir / f"{JOURNAL_FILE}.legacy")
            logger.warning("legacy journal set aside: its model is unknown")
        return None
    target = model_dir(data_dir, name)
    target.mkdir(parents=True, exist_ok=True)
    for path in legacy:  # active.json last: while it is at the top, the move is unfinished
        if path.exists():
            os.replace(path, target / path.name)
    _fsync_dir(target)
    _fsync_dir(data_dir)
    logger.warning("one-model state moved model=%s to=%s", name, target)
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
