"""The signed repository as a static tree that any web server, CDN or object store serves.

::

    <dest>/metadata/N.root.json, root.json, N.targets.json, N.snapshot.json, timestamp.json
    <dest>/targets/<sha256>.<target path>

The same layout ngclient asks for (consistent snapshots), so an agent with
``mirrors = ["https://<host>/<prefix>"]`` fetches from it exactly what it would
fetch over MQTT, and TUF verifies it the same way. Never the keys, never the
database: the tree is public.

Order makes every moment of the tree consistent for a reader: targets first, then
the versioned metadata, and ``timestamp.json`` (the one file that says what is
current) last, each written atomically, so no published timestamp ever points at a
file that is not there yet. Names that carry a version or a hash never change
content, so a file already exported with the same size is skipped; only
``timestamp.json`` and the unversioned ``root.json`` are rewritten each time.

For an S3 bucket or a CDN origin, sync this directory after each export (e.g.
``aws s3 sync --size-only``, timestamp.json last) and serve ``timestamp.json`` with a
short cache lifetime (``Cache-Control: no-cache``): a cached old timestamp is never
accepted as newer than one a device has seen, but it hides a new release until it
expires.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

MUTABLE = frozenset({"timestamp.json", "root.json"})


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote: files and bytes (skipped files are not counted)."""

    files: int
    bytes: int


def export_static_tree(repository_root: Path, dest: Path) -> ExportResult:
    """Copy the repository's ``metadata/`` and ``targets/`` under ``dest``, in a safe order.

    Raises:
        OSError: a file could not be read or written.
    """
    repository_root, dest = Path(repository_root), Path(dest)
    targets = sorted((repository_root / "targets").glob("*"))
    metadata = sorted((repository_root / "metadata").glob("*.json"))
    ordered = (
        [("targets", p) for p in targets]
        + [("metadata", p) for p in metadata if p.name not in MUTABLE]
        + [("metadata", p) for p in metadata if p.name == "root.json"]
        + [("metadata", p) for p in metadata if p.name == "timestamp.json"]
    )
    files = written = 0
    for directory, source in ordered:
        if not source.is_file() or source.name.startswith("."):
            continue  # an atomic write's temp file
        target = dest / directory / source.name
        unchanged = source.name not in MUTABLE and target.is_file()
        if unchanged and target.stat().st_size == source.stat().st_size:
            continue
        data = source.read_bytes()
        atomic_write(target, data)
        files += 1
        written += len(data)
    if files:
        logger.info("static tree exported dest=%s files=%d bytes=%d", dest, files, written)
    return ExportResult(files, written)
