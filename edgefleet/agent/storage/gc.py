"""Garbage collection of the data dir: what no install, rollback or handover can need.

Collected (``collect_garbage``), on start and every ``[disk] gc_interval_s``:

* **superseded bundles**: downloaded bundle files in ``downloads/`` that no unfinished
  install names (a successful install deletes its own; a failed one leaves it), and
  anything in a model's ``slots/`` other than the two slots ``a`` and ``b``;
* **orphaned .part files** in ``downloads/parts/``, of offers no unfinished install
  names, once ``part_grace_s`` old (a refused or interrupted offer that the control
  plane offers again within the grace resumes from its ``.part``);
* **the shadow directory** once no shadow model runs (the rollout it served ended);
* **old TUF metadata**: ``root_history/<n>.root.json`` below the trusted root's version
  (ngclient only ever loads newer versions than the one it trusts), and temporary
  files ngclient left behind after a crash;
* **agent versions** in ``agent-versions/`` other than the current one, the previous
  one (the launcher's way back) and the one a pending handover names, and staging
  directories of self-updates no longer under way.

Never collected: a model's active slot or its rollback slot (the other of ``a``/``b``
is always kept whole, so a rollback always finds its model), a slot or target an
unfinished install's journal names, and anything while an install job runs: the
caller holds the offer worker's job lock (``edgefleet.agent.install.updater``) around
a collection, so a file cannot be collected while an install is creating it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib import parse

from edgefleet.agent.install.journal import Journal
from edgefleet.agent.install.layout import MODEL_NAME_RE, MODELS_DIR
from edgefleet.agent.install.shadow import SHADOW_DIR
from edgefleet.agent.install.slots import SLOT_NAMES
from edgefleet.agent.launcher import VERSIONS_DIR
from edgefleet.agent.storage.budget import tree_size
from edgefleet.agent.verification.transport import downloads_dir, tuf_metadata_dir

logger = logging.getLogger(__name__)

PARTS_DIR = "parts"
VERSION_FILES = frozenset(
    {"current.json", "handover.json", "confirmed.json", "outcome.json", "failed.json"}
)


@dataclass
class Collected:
    """What one collection removed: paths (relative to the data dir) and bytes freed."""

    removed: list[str] = field(default_factory=list)
    freed: int = 0

    def add(self, data_dir: Path, path: Path) -> None:
        size = tree_size(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            logger.warning("gc could not remove path=%s reason=%s", path, e)
            return
        self.removed.append(str(path.relative_to(data_dir)))
        self.freed += size


def held_targets(data_dir: Path) -> set[str]:
    """Targets of every unfinished install, over all hosted models' journals."""
    held: set[str] = set()
    root = Path(data_dir) / MODELS_DIR
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.is_dir() and MODEL_NAME_RE.match(entry.name):
                record = Journal(entry).read()
                if record is not None and not record.finished:
                    held.add(record.target)
    return held


def _old(path: Path, grace_s: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime >= grace_s
    except OSError:
        return False


def _held_part(relative: str, held: set[str]) -> bool:
    """A ``.part`` is named after the target's file (prefixed with its hash)."""
    name = relative.removesuffix(".part")
    return any(name == t or name.endswith("." + t.rpartition("/")[2]) for t in held)


def _collect_downloads(
    data_dir: Path, held: set[str], grace_s: float, now: float, out: Collected
) -> None:
    root = downloads_dir(data_dir)
    held_files = {parse.quote(t, "") for t in held}
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name == PARTS_DIR:
                continue
            if entry.name not in held_files and _old(entry, grace_s, now):
                out.add(data_dir, entry)
    parts = root / PARTS_DIR
    with contextlib.suppress(OSError):
        for part in sorted(parts.rglob("*.part")):
            relative = str(part.relative_to(parts))
            if not _held_part(relative, held) and _old(part, grace_s, now):
                out.add(data_dir, part)


def _collect_slots(data_dir: Path, out: Collected) -> None:
    """Anything in a model's ``slots/`` but the two slots (a torn rename, an old layout)."""
    root = Path(data_dir) / MODELS_DIR
    with contextlib.suppress(OSError):
        for model in root.iterdir():
            slots = model / "slots"
            if not slots.is_dir():
                continue
            for entry in slots.iterdir():
                if entry.name not in SLOT_NAMES:
                    out.add(data_dir, entry)


def trusted_root_version(metadata_dir: Path) -> int | None:
    """The version of ``root.json`` (what ngclient trusts), None when unreadable."""
    try:
        signed = json.loads((metadata_dir / "root.json").read_bytes())["signed"]
        version = signed["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) else None


def _collect_metadata(data_dir: Path, grace_s: float, now: float, out: Collected) -> None:
    metadata_dir = tuf_metadata_dir(data_dir)
    current = trusted_root_version(metadata_dir)
    if current is not None:
        with contextlib.suppress(OSError):
            for path in (metadata_dir / "root_history").iterdir():
                version, _, rest = path.name.partition(".")
                if rest == "root.json" and version.isdigit() and int(version) < current:
                    out.add(data_dir, path)
    with contextlib.suppress(OSError):  # ngclient's NamedTemporaryFile after a crash
        for path in metadata_dir.glob("tmp*"):
            if path.is_file() and _old(path, grace_s, now):
                out.add(data_dir, path)


def _collect_versions(data_dir: Path, out: Collected) -> None:
    root = Path(data_dir) / VERSIONS_DIR
    keep: set[str] = set()
    for name, keys in (("current.json", ("version", "previous")), ("handover.json", ("version",))):
        try:
            record = json.loads((root / name).read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return  # the launcher's state is unreadable: keep everything
        if isinstance(record, dict):
            keep.update(str(record[k]) for k in keys if record.get(k) is not None)
            previous = record.get("previous_record")
            if isinstance(previous, dict) and previous.get("version") is not None:
                keep.add(str(previous["version"]))
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name in VERSION_FILES or entry.name in keep or not entry.is_dir():
                continue
            out.add(data_dir, entry)


def collect_garbage(
    data_dir: Path,
    *,
    part_grace_s: float,
    shadow_running: bool,
    now: float | None = None,
) -> Collected:
    """Remove what no install, rollback or handover can need (see the module docstring).

    The caller holds the install worker's job lock: nothing is being installed.

    Args:
        data_dir: the agent's data dir.
        part_grace_s: seconds a download or ``.part`` no journal names is kept.
        shadow_running: a shadow model runs (its directory is kept).
        now: the wall clock (``time.time()``), for files' ages.

    Returns:
        What was removed and the bytes freed.
    """
    data_dir = Path(data_dir)
    now = time.time() if now is None else now
    out = Collected()
    _collect_downloads(data_dir, held_targets(data_dir), part_grace_s, now, out)
    _collect_slots(data_dir, out)
    if not shadow_running:
        shadow = data_dir / SHADOW_DIR
        if shadow.exists():
            out.add(data_dir, shadow)
    _collect_metadata(data_dir, part_grace_s, now, out)
    _collect_versions(data_dir, out)
    if out.removed:
        logger.info("gc removed count=%d freed_bytes=%d paths=%s", len(out.removed), out.freed,
                    out.removed[:20])  # fmt: skip
    return out
