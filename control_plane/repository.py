"""The signed TUF repository the fleet verifies bundles against.

Built on python-tuf's Metadata API. Each role has keys of its own, kept in the
``Keyring`` (``keys/``, private halves encrypted when a passphrase is set, or held
by an external signing command): root needs ``root_threshold`` of its
``root_keys`` signatures (2 of 3 by default; move root keys offline after
creation), targets, snapshot and timestamp one each, the last two online because
the control plane re-signs them on a schedule.

Keys are rotated or revoked by publishing a new root version signed by the old
root's threshold and the new root's, so a device that was offline across several
rotations follows the chain ``N.root.json`` one step at a time, and a root signed
only by new keys is refused. ``consistent_snapshot`` is on, so every file a
client fetches has a stable name::

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

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
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
from control_plane.keyring import KeyEntry, Keyring, SigningError
from edgefleet.fileio import atomic_write
from edgefleet.trust import ISSUED_FIELD

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
    """A TUF repository on disk under ``root_dir``, each role signed by its own keys."""

    def __init__(
        self,
        root_dir: Path,
        *,
        passphrase: bytes | None = None,
        root_keys: int = 3,
        root_threshold: int = 2,
    ) -> None:
        if not 1 <= root_threshold <= root_keys:
            raise ValueError("root threshold must be between 1 and the number of root keys")
        self.root_dir = Path(root_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"
        self.keyring = Keyring(self.root_dir / "keys", passphrase=passphrase)
        self._root_keys = root_keys
        self._root_threshold = root_threshold
        self._lock = threading.RLock()
        self._root: Metadata[Root] | None = None
        self._targets: Metadata[Targets] | None = None
        self._snapshot: Metadata[Snapshot] | None = None
        self._timestamp: Metadata[Timestamp] | None = None

    # -- set-up ----------------------------------------------------------------

    def init_or_load(self) -> None:
        """Load the repository from disk, or create and sign version 1 of every role."""
        with self._lock:
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

    def _create(self) -> None:
        now = _now()
        root = Root(expires=now + EXPIRY[Root.type], consistent_snapshot=True)
        for role, count in (
            (Root.type, self._root_keys),
            (Targets.type, 1),
            (Snapshot.type, 1),
            (Timestamp.type, 1),
        ):
            for _ in range(count):
                root.add_key(self.keyring.generate(role).public_key(), role)
        root.roles[Root.type].threshold = self._root_threshold
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

    def _signers(self, role: str) -> list[Signer]:
        """Available signers whose keys the current root lists for ``role``."""
        allowed = set(self._root_md.signed.roles[role].keyids)
        return [s for s in self.keyring.signers(role) if s.public_key.keyid in allowed]

    def _sign(self, md: Metadata[Any], extra: list[Signer] | None = None) -> bytes:
        role = md.signed.type
        signers = self._signers(role)
        threshold = self._root_md.signed.roles[role].threshold
        if len(signers) < threshold:
            raise SigningError(
                f"{role} needs {threshold} signatures but only {len(signers)} of its keys "
                "are available here"
            )
        md.signatures.clear()
        seen: set[str] = set()
        for signer in [*(extra or []), *signers]:
            if signer.public_key.keyid not in seen:
                try:
                    md.sign(signer, append=True)
                except UnsignedMetadataError as e:
                    raise SigningError(f"{role}: {e.__cause__ or e}") from e
                seen.add(signer.public_key.keyid)
        return md.to_bytes()

    def _write_root(self, extra: list[Signer] | None = None) -> None:
        data = self._sign(self._root_md, extra)
        atomic_write(self.metadata_dir / f"{self._root_md.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / "root.json", data)

    def _write_targets(self) -> None:
        data = self._sign(self._targets_md)
        atomic_write(self.metadata_dir / f"{self._targets_md.signed.version}.targets.json", data)

    def _write_snapshot(self) -> None:
        data = self._sign(self._snapshot_md)
        atomic_write(self.metadata_dir / f"{self._snapshot_md.signed.version}.snapshot.json", data)

    def _write_timestamp(self) -> None:
        # Devices raise their time floor to this signed signing time (edgefleet.trust).
        self._timestamp_md.signed.unrecognized_fields[ISSUED_FIELD] = _now().isoformat()
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

    # -- key management --------------------------------------------------------------

    def rotate_key(self, role: str, keyid: str | None = None) -> KeyEntry:
        """Replace one key of ``role`` (the only one when ``keyid`` is None) with a new key."""
        with self._lock:
            keyids = self._root_md.signed.roles[role].keyids
            if keyid is None:
                if len(keyids) != 1:
                    raise SigningError(f"{role} has {len(keyids)} keys: name the one to rotate")
                keyid = keyids[0]
            old = self.keyring.entry(keyid)
            if old.role != role or old.keyid not in keyids:
                raise SigningError(f"key {keyid[:12]} is not a {role} key of the current root")
            new = self.keyring.generate(role)
            try:
                self._change_root(add=[(role, new.public_key())], revoke=[(role, old.keyid)])
            except SigningError:
                self.keyring.remove(new.keyid)
                raise
            self.keyring.remove(old.keyid)
            self._resign_after_key_change(role)
            logger.info("key rotated role=%s old=%s new=%s", role, old.keyid[:12], new.keyid[:12])
            return new

    def revoke_key(self, keyid: str) -> KeyEntry:
        """Remove a key from its role; refused when the role would fall below its threshold."""
        with self._lock:
            entry = self.keyring.entry(keyid)
            role_meta = self._root_md.signed.roles[entry.role]
            if len(role_meta.keyids) - 1 < role_meta.threshold:
                raise SigningError(
                    f"revoking would leave {entry.role} with fewer keys than its threshold "
                    f"({role_meta.threshold}); rotate the key instead"
                )
            self._change_root(add=[], revoke=[(entry.role, entry.keyid)])
            self.keyring.remove(entry.keyid)
            self._resign_after_key_change(entry.role)
            logger.info("key revoked role=%s keyid=%s", entry.role, entry.keyid[:12])
            return entry

    def add_command_key(self, role: str, command: list[str], public_key: Key) -> KeyEntry:
        """Delegate signing for ``role`` to an external command holding ``public_key``'s pair."""
        with self._lock:
            entry = self.keyring.add_command(role, command, public_key)
            try:
                self._change_root(add=[(role, public_key)], revoke=[])
            except SigningError:
                self.keyring.remove(entry.keyid)
                raise
            return entry

    def keys_summary(self) -> list[dict[str, Any]]:
        """Per role: threshold, keys (id, kind, whether usable here) and metadata expiry."""
        with self._lock:
            root = self._root_md.signed
            usable = {s.public_key.keyid for role in root.roles for s in self.keyring.signers(role)}
            expiries = {
                Root.type: root.expires,
                Targets.type: self._targets_md.signed.expires,
                Snapshot.type: self._snapshot_md.signed.expires,
                Timestamp.type: self._timestamp_md.signed.expires,
            }
            summary = []
            for role in (Root.type, Targets.type, Snapshot.type, Timestamp.type):
                meta = root.roles[role]
                keys = []
                for keyid in meta.keyids:
                    entries = [e for e in self.keyring.entries(role) if e.keyid == keyid]
                    keys.append(
                        {
                            "keyid": keyid,
                            "kind": entries[0].kind if entries else "unknown",
                            "available": keyid in usable,
                        }
                    )
                summary.append(
                    {
                        "role": role,
                        "threshold": meta.threshold,
                        "keys": keys,
                        "expires": expiries[role].isoformat(),
                        "root_version": root.version,
                    }
                )
            return summary

    def _change_root(self, *, add: list[tuple[str, Key]], revoke: list[tuple[str, str]]) -> None:
        """Publish root N+1 with the key changes, signed by old and new root thresholds."""
        old_root = self._root_md.signed
        old_signers = self._signers(Root.type)
        if len(old_signers) < old_root.roles[Root.type].threshold:
            raise SigningError(
                f"changing keys needs {old_root.roles[Root.type].threshold} root signatures; "
                f"{len(old_signers)} root keys are available here"
            )
        backup = Metadata[Root].from_bytes(self._root_md.to_bytes())
        try:
            for role, key in add:
                old_root.add_key(key, role)
            for role, keyid in revoke:
                old_root.revoke_key(keyid, role)
            old_root.version += 1
            old_root.expires = _now() + EXPIRY[Root.type]
            self._write_root(extra=old_signers)
        except (SigningError, ValueError):
            self._root = backup
            raise

    def _resign_after_key_change(self, role: str) -> None:
        """New signatures from the new key on the role's metadata and what depends on it."""
        now = _now()
        if role == Targets.type:
            self._targets_md.signed.version += 1
            self._write_targets()
        if role in (Targets.type, Snapshot.type):
            self._bump_snapshot_and_timestamp(now)
        elif role == Timestamp.type:
            self._bump_timestamp(now)

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
