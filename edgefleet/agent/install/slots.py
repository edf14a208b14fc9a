"""Two model slots on disk (``slots/a``, ``slots/b``) and the record of the active one.

A new bundle is always unpacked into the slot that is *not* active, so the model
being served is never touched until ``active.json`` is replaced atomically. The
record also keeps the highest release ever installed, which is what lets the agent
refuse an older bundle even if newer signed metadata still lists it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Literal

import msgspec
from msgspec import field

from edgefleet import schema
from edgefleet.agent.errors import SlotError
from edgefleet.bundle import MANIFEST_NAME, Manifest
from edgefleet.errors import BundleError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("a", "b")
ACTIVE_FILE = "active.json"


class ActiveRecord(schema.Open, frozen=True, kw_only=True):
    """What ``active.json`` holds: the slot being served and what is in it.

    Fields a newer agent wrote are kept (``edgefleet.schema.Open``).
    """

    slot: SlotName
    bundle_id: str
    release: int
    model: str
    model_version: str
    installed_at: float = field(default_factory=time.time)
    highest_release: int = 0

    def highest(self) -> int:
        """Highest release ever installed (never below the active one)."""
        return max(self.release, self.highest_release)


class SlotStore:
    """The slot directories and ``active.json`` under the agent's data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.active_path = self.data_dir / ACTIVE_FILE

    def slot_dir(self, slot: SlotName) -> Path:
        """``<data_dir>/slots/<slot>`` (which may not exist yet)."""
        return self.data_dir / "slots" / slot

    def read_active(self) -> ActiveRecord | None:
        """The active record, or None when nothing was ever installed.

        Raises:
            SlotError: ``active.json`` exists but cannot be read or decoded.
        """
        try:
            data = self.active_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SlotError(f"cannot read {self.active_path}: {e}") from e
        try:
            return schema.decode_json(data, ActiveRecord)
        except msgspec.DecodeError as e:
            raise SlotError(f"{self.active_path} is invalid: {schema.describe(e)}") from e

    def inactive_slot(self, active: ActiveRecord | None = None) -> SlotName:
        """The slot a new bundle goes into: whichever is not active."""
        if active is None:
            return "a"
        return "b" if active.slot == "a" else "a"

    def prepare_slot(self, slot: SlotName) -> Path:
        """Empty ``slot`` (never the active one) and return its directory.

        Raises:
            SlotError: ``slot`` is the active one, or ``active.json`` is unreadable.
            OSError: the slot directory cannot be removed or created.
        """
        active = self.read_active()
        if active is not None and active.slot == slot:
            raise SlotError(f"refusing to empty the active slot {slot}")
        path = self.slot_dir(slot)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def write_active(self, record: ActiveRecord) -> ActiveRecord:
        """Make ``record`` the active one atomically, carrying the highest release forward.

        Returns:
            The record as written, ``highest_release`` raised to the highest ever.

        Raises:
            SlotError: the current ``active.json`` is unreadable.
            OSError: the new one cannot be written; the old one stays.
        """
        previous = self.read_active()
        highest = max(record.highest(), previous.highest() if previous else 0)
        record = schema.replace(record, highest_release=highest)
        payload = json.dumps(schema.to_builtins(record), indent=2, sort_keys=True)
        atomic_write(self.active_path, payload.encode() + b"\n")
        logger.info(
            "active slot switched slot=%s bundle_id=%s release=%d",
            record.slot,
            record.bundle_id,
            record.release,
        )
        return record


def read_slot_manifest(slot_dir: Path) -> Manifest:
    """The manifest of a bundle unpacked in ``slot_dir``; ``BundleError`` when unusable."""
    path = Path(slot_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read: {e.strerror or e}", file=MANIFEST_NAME) from e
    try:
        manifest = schema.decode_json(data, Manifest)
    except msgspec.DecodeError as e:
        raise BundleError(f"invalid manifest: {schema.describe(e)}", file=MANIFEST_NAME) from e
    manifest.check_consistency()
    return manifest
