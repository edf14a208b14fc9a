"""The signed TUF repository the fleet verifies bundles against.

Built on python-tuf's Metadata API. One online Ed25519 key signs all four roles
(threshold 1); it lives at ``keys/online.pem`` (mode 0600) and is reloaded on
restart. ``consistent_snapshot`` is on, so every file a client fetches has a
stable name::

    <root>/metadata/1.root.json, root.json      root (versioned + a copy)
    <root>/metadata/N.targets.json              targets
    <root>/metadata/N.snapshot.json             snapshot
    <root>/metadata/timestamp.json              timestamp
    <root>/targets/<sha256>.<target path>       target files

Every write is atomic and versions only go up. A lock serialises mutation, so the
API, the MQTT fetch pool and the scheduler may share one instance.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from control_plane.errors import InvalidRequestError, NotFoundError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

EXPIRY = {
    Root.type: timedelta(days=365),
    Targets.type: timedelta(days=90),
    Snapshot.type: timedelta(days=7),
    Timestamp.type: timedelta(days=1),
}
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SERVED_DIRS = ("metadata", "targets")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class SignedRepository:
    """A TUF repository on disk under ``root_dir``, signed with one online key."""

    def __init__(self, root_dir: Path) -> None:
        self.root_dir = Path(root_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"
        self.key_path = self.root_dir / "keys" / "online.pem"
        self._lock = threading.RLock()
        self._signer: CryptoSigner | None = None
        self._root: Metadata[Root] | None = None
        self._targets: Metadata[Targets] | None = None
        self._snapshot: Metadata[Snapshot] | None = None
        self._timestamp: Metadata[Timestamp] | None = None

    # -- set-up ----------------------------------------------------------------

    def init_or_load(self) -> None:
        """Load the repository from disk, or create and sign version 1 of every role."""
        with self._lock:
            self._signer = self._load_or_create_key()
            if (self.metadata_dir / "root.json").exists():
                self._load()
                logger.info(
                    "tuf repository loaded dir=%s targets_version=%d",
                    self.root_dir,
                    self._targets_md.signed.version,
                )
            else:
                self._create()
                logger.info("tuf repository created dir=%s", self.root_dir)

    def _load_or_create_key(self) -> CryptoSigner:
        if self.key_path.exists():
            private_key = load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(private_key, Ed25519PrivateKey):
                raise ValueError(f"{self.key_path} does not hold an Ed25519 key")
            return CryptoSigner(private_key)
        signer = CryptoSigner.generate_ed25519()
        atomic_write(self.key_path, signer.private_bytes, mode=0o600)
        return signer

    def _create(self) -> None:
        now = _now()
        signer = self._signer_checked
        root = Root(expires=now + EXPIRY[Root.type], consistent_snapshot=True)
        for role in (Root.type, Targets.type, Snapshot.type, Timestamp.type):
            root.add_key(signer.public_key, role)
        self._root = Metadata(root)
        self._targets = Metadata(Targets(expires=now + EXPIRY[Targets.type]))
        self._snapshot = Metadata(Snapshot(expires=now + EXPIRY[Snapshot.type]))
        self._timestamp = Metadata(Timestamp(expires=now + EXPIRY[Timestamp.type]))
        self._write_root()
        self._write_targets()
        self._snapshot.signed.meta["targets.json"] = MetaFile(self._targets.signed.version)
        self._write_snapshot()
        self._timestamp.signed.snapshot_meta = MetaFile(self._snapshot.signed.version)
        self._write_timestamp()

    def _load(self) -> None:
        versions = sorted(
            int(p.name.split(".", 1)[0]) for p in self.metadata_dir.glob("*.root.json")
        )
        self._root = Metadata[Root].from_file(str(self.metadata_dir / f"{versions[-1]}.root.json"))
        self._timestamp = Metadata[Timestamp].from_file(str(self.metadata_dir / "timestamp.json"))
        snapshot_version = self._timestamp.signed.snapshot_meta.version
        self._snapshot = Metadata[Snapshot].from_file(
            str(self.metadata_dir / f"{snapshot_version}.snapshot.json")
        )
        targets_version = self._snapshot.signed.meta["targets.json"].version
        self._targets = Metadata[Targets].from_file(
            str(self.metadata_dir / f"{targets_version}.targets.json")
        )

    # -- writing -----------------------------------------------------------------

    def _sign(self, md: Metadata[Any]) -> bytes:
        md.signatures.clear()
        md.sign(self._signer_checked)
        return md.to_bytes()

    def _write_root(self) -> None:
        data = self._sign(self._root_md)
        atomic_write(self.metadata_dir / f"{self._root_md.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / "root.json", data)

    def _write_targets(self) -> None:
        data = self._sign(self._targets_md)
        atomic_write(self.metadata_dir / f"{self._targets_md.signed.version}.targets.json", data)

    def _write_snapshot(self) -> None:
        data = self._sign(self._snapshot_md)
        atomic_write(self.metadata_dir / f"{self._snapshot_md.signed.version}.snapshot.json", data)

    def _write_timestamp(self) -> None:
        atomic_write(self.metadata_dir / "timestamp.json", self._sign(self._timestamp_md))

    def _bump_snapshot_and_timestamp(self, now: datetime) -> None:
        snapshot = self._snapshot_md.signed
        snapshot.version += 1
        snapshot.expires = now + EXPIRY[Snapshot.type]
        snapshot.meta["targets.json"] = MetaFile(self._targets_md.signed.version)
        self._write_snapshot()
        self._bump_timestamp(now)

    def _bump_timestamp(self, now: datetime) -> None:
        timestamp = self._timestamp_md.signed
        timestamp.version += 1
        timestamp.expires = now + EXPIRY[Timestamp.type]
        timestamp.snapshot_meta = MetaFile(self._snapshot_md.signed.version)
        self._write_timestamp()

    # -- public operations -------------------------------------------------------

    def add_target(self, target_path: str, data: bytes, custom: dict[str, Any]) -> TargetFile:
        """Store ``data`` as target ``target_path`` and sign new targets/snapshot/timestamp."""
        if not FILE_NAME_RE.fullmatch(target_path):
            raise InvalidRequestError(f"invalid target path {target_path!r}")
        target = TargetFile.from_data(target_path, data, ["sha256"])
        target.unrecognized_fields["custom"] = dict(custom)
        with self._lock:
            now = _now()
            atomic_write(self.targets_dir / f"{target.hashes['sha256']}.{target_path}", data)
            targets = self._targets_md.signed
            targets.targets[target_path] = target
            targets.version += 1
            targets.expires = now + EXPIRY[Targets.type]
            self._write_targets()
            self._bump_snapshot_and_timestamp(now)
            logger.info(
                "tuf target added target=%s targets_version=%d", target_path, targets.version
            )
        return target

    def refresh_timestamp(self, min_remaining: timedelta = timedelta(hours=6)) -> bool:
        """Re-sign roles close to expiry; True when anything was re-signed.

        The timestamp is re-signed when less than ``min_remaining`` of it is left;
        snapshot and targets when less than a third of their lifetime (or
        ``min_remaining``, if longer) is left.
        """
        with self._lock:
            now = _now()

            def near(expires: datetime, role: str) -> bool:
                margin = max(min_remaining, EXPIRY[role] / 3)
                return expires - now < margin

            changed = False
            if near(self._targets_md.signed.expires, Targets.type):
                self._targets_md.signed.version += 1
                self._targets_md.signed.expires = now + EXPIRY[Targets.type]
                self._write_targets()
                changed = True
            if changed or near(self._snapshot_md.signed.expires, Snapshot.type):
                self._bump_snapshot_and_timestamp(now)
                changed = True
            elif self._timestamp_md.signed.expires - now < min_remaining:
                self._bump_timestamp(now)
                changed = True
            if changed:
                logger.info(
                    "tuf metadata refreshed timestamp_version=%d",
                    self._timestamp_md.signed.version,
                )
            return changed

    def root_bytes(self) -> bytes:
        """The current signed root metadata, as served to devices at enrolment."""
        with self._lock:
            version = self._root_md.signed.version
        return (self.metadata_dir / f"{version}.root.json").read_bytes()

    @property
    def targets_version(self) -> int:
        with self._lock:
            return self._targets_md.signed.version

    def read_chunk(self, path: str, offset: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes of ``metadata/<file>`` or ``targets/<file>`` from ``offset``.

        Returns (bytes, total file length). ``NotFoundError`` for a missing file,
        ``InvalidRequestError`` for a bad path or an offset past the end.
        """
        directory, sep, name = path.partition("/")
        if not sep or directory not in SERVED_DIRS or not FILE_NAME_RE.fullmatch(name):
            raise InvalidRequestError(f"invalid repository path {path!r}")
        if ".." in name:
            raise InvalidRequestError(f"invalid repository path {path!r}")
        if offset < 0 or length <= 0:
            raise InvalidRequestError("offset must be >= 0 and length > 0")
        file_path = self.root_dir / directory / name
        try:
            with file_path.open("rb") as handle:
                total = handle.seek(0, 2)
                if offset > total:
                    raise InvalidRequestError(f"offset {offset} is past the end ({total})")
                handle.seek(offset)
                return handle.read(length), total
        except (FileNotFoundError, IsADirectoryError) as e:
            raise NotFoundError(f"{path} not found") from e

    # -- typed accessors -----------------------------------------------------------

    @property
    def _signer_checked(self) -> CryptoSigner:
        if self._signer is None:
            raise RuntimeError("repository not initialised: call init_or_load()")
        return self._signer

    @property
    def _root_md(self) -> Metadata[Root]:
        if self._root is None:
            raise RuntimeError("repository not initialised: call init_or_load()")
        return self._root

    @property
    def _targets_md(self) -> Metadata[Targets]:
        if self._targets is None:
            raise RuntimeError("repository not initialised: call init_or_load()")
        return self._targets

    @property
    def _snapshot_md(self) -> Metadata[Snapshot]:
        if self._snapshot is None:
            raise RuntimeError("repository not initialised: call init_or_load()")
        return self._snapshot

    @property
    def _timestamp_md(self) -> Metadata[Timestamp]:
        if self._timestamp is None:
            raise RuntimeError("repository not initialised: call init_or_load()")
        return self._timestamp
