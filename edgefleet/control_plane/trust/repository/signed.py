"""The signed repository: signing steps under one lock, set-up, signing and serving.

The package docstring says where the state lives and how replicas share it; key
management is in :mod:`.keys`, the database side in :mod:`.state`.

Why this module stays over 400 lines: ``SignedRepository``'s steps, writers, bumps
and typed accessors all work on one private view (``_state``, ``_current``) that
exists only inside a step under the repository lock; splitting them further would
spread that invariant (read, sign, store and publish under one lock, never a stale
view) over modules that each see only part of it. What is separable (the database
side, key management) is already out.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import Signer
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
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

from edgefleet.control_plane.core.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.control_plane.core.tables import RepositoryLock, RepositoryMetadata
from edgefleet.control_plane.trust.keyring import ROLES, Keyring, SigningError
from edgefleet.control_plane.trust.repository.export import export_static_tree
from edgefleet.control_plane.trust.repository.keys import _KeyManagement
from edgefleet.control_plane.trust.repository.state import (
    EXPIRY,
    TrustFloorError,
    _latest,
    _now,
    _State,
    _Step,
    create_repository_tables,
    standalone_engine,
    trust_floors,
)
from edgefleet.fileio import atomic_write
from edgefleet.trust import ISSUED_FIELD

logger = logging.getLogger(__name__)

_Md = TypeVar("_Md", bound=Metadata[Any])

FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SERVED_DIRS = ("metadata", "targets")


class SignedRepository(_KeyManagement):
    """A TUF repository: state in the database, files under ``root_dir``, shared by replicas.

    ``engine`` is the control plane's database; without one the repository keeps
    its state in ``<root_dir>/repository.db`` (SQLite), for use on its own.
    """

    def __init__(
        self,
        root_dir: Path,
        *,
        engine: Engine | None = None,
        passphrase: bytes | None = None,
        root_keys: int = 3,
        root_threshold: int = 2,
        replica: str | None = None,
        static_tree: Path | None = None,
    ) -> None:
        """``static_tree``: also export metadata and targets there after every signing
        step (``export.export_static_tree``), for HTTP mirrors."""
        if not 1 <= root_threshold <= root_keys:
            raise ValueError("root threshold must be between 1 and the number of root keys")
        self.root_dir = Path(root_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"
        self.keyring = Keyring(self.root_dir / "keys", passphrase=passphrase)
        if engine is None:
            engine = standalone_engine(self.root_dir / "repository.db")
            create_repository_tables(engine)
        self._engine = engine
        self._replica = replica
        self.static_tree = Path(static_tree) if static_tree is not None else None
        self._root_keys = root_keys
        self._root_threshold = root_threshold
        self._lock = threading.RLock()  # one step at a time in this process, too
        self._state = _State()
        self._current: _Step | None = None

    # -- steps -------------------------------------------------------------------

    def _ensure_lock_row(self) -> None:
        with Session(self._engine) as session:
            if session.get(RepositoryLock, 1) is not None:
                return
            session.add(RepositoryLock(id=1))
            try:
                session.commit()
            except IntegrityError:  # another replica created it first
                session.rollback()

    @contextmanager
    def _step(self) -> Iterator[_Step]:
        """Hold the repository lock (across replicas), read the latest state, then store
        and publish whatever was signed, and commit; nothing is kept if anything fails."""
        with self._lock, Session(self._engine) as session:
            # The first statement of the transaction: it waits for any other replica's
            # step to commit, and everything read after it sees that commit.
            locked = session.execute(
                update(RepositoryLock)
                .where(col(RepositoryLock.id) == 1)
                .values(steps=RepositoryLock.steps + 1)
            )
            if locked.rowcount != 1:  # type: ignore[attr-defined]
                raise RuntimeError("repository not initialised: call init_or_load()")
            self.keyring.reload()
            self._state = _latest(session)
            step = _Step(session=session, floors=trust_floors(session))
            self._current = step
            try:
                yield step
                self._store_and_publish(step)
                session.commit()
                if step.signed:
                    self.export()
            except BaseException:
                session.rollback()
                raise
            finally:
                self._current = None
                self._state = _State()  # read again at the next step: never a stale view

    def _store_and_publish(self, step: _Step) -> None:
        for role, version, data in step.signed:
            step.session.add(
                RepositoryMetadata(role=role, version=version, data=data, signed_by=self._replica)
            )
        try:
            step.session.flush()
        except IntegrityError as e:
            raise SigningError(
                "a metadata version was already signed by another replica; nothing published"
            ) from e
        # Versioned files before the timestamp that points at them.
        for role, version, data in sorted(step.signed, key=lambda s: s[0] == Timestamp.type):
            self._write_file(role, version, data)
        if step.signed:
            logger.info(
                "tuf metadata signed %s",
                " ".join(f"{role}={version}" for role, version, _ in step.signed),
            )

    def _write_file(self, role: str, version: int, data: bytes) -> None:
        if role == Timestamp.type:
            atomic_write(self.metadata_dir / "timestamp.json", data)
            return
        atomic_write(self.metadata_dir / f"{version}.{role}.json", data)
        if role == Root.type:
            atomic_write(self.metadata_dir / "root.json", data)

    def _publish_all(self, session: Session) -> None:
        """Write the database's state out as files: every root, the latest of the rest."""
        rows = session.exec(
            select(RepositoryMetadata.role, RepositoryMetadata.version, RepositoryMetadata.data)
            .where(RepositoryMetadata.role == Root.type)
            .order_by(col(RepositoryMetadata.version))
        ).all()
        for role, version, data in rows:
            path = self.metadata_dir / f"{version}.{role}.json"
            if not path.is_file() or path.read_bytes() != bytes(data):
                atomic_write(path, bytes(data))
        state = self._state
        for md in (state.targets, state.snapshot, state.timestamp, state.root):
            assert md is not None
            self._write_file(md.signed.type, md.signed.version, md.to_bytes())

    # -- set-up ----------------------------------------------------------------

    def init_or_load(self) -> None:
        """Load the repository, or create and sign version 1 of every role.

        Safe for several replicas starting at once: the first to take the lock
        creates (keys into the shared ``keys/``, version 1 into the database); the
        others find it. A repository from before the database held the metadata is
        imported from its files. When devices already trust newer versions (the
        state was restored from a backup), the repository bumps past them.
        """
        self._ensure_lock_row()
        with self._step() as step:
            if self._state.root is None:
                if (self.metadata_dir / "root.json").exists():
                    self._import_files(step)
                    logger.info("tuf repository imported from files dir=%s", self.root_dir)
                else:
                    self._create()
                    logger.info("tuf repository created dir=%s", self.root_dir)
            else:
                self._publish_all(step.session)
                logger.info(
                    "tuf repository loaded dir=%s targets_version=%d",
                    self.root_dir,
                    self._targets_md.signed.version,
                )
        behind = self.behind()
        if behind:
            logger.warning("tuf repository behind what devices trust roles=%s", behind)
            self.bump(root_required=False)
        self.export()

    def export(self) -> None:
        """Write the static tree for mirrors, when one is configured (after a commit,
        so the tree is never ahead of the database)."""
        if self.static_tree is not None:
            export_static_tree(self.root_dir, self.static_tree)

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
        self._state = _State(
            root=Metadata(root),
            targets=Metadata(Targets(expires=now + EXPIRY[Targets.type])),
            snapshot=Metadata(Snapshot(expires=now + EXPIRY[Snapshot.type])),
            timestamp=Metadata(Timestamp(expires=now + EXPIRY[Timestamp.type])),
        )
        self._write_root()
        self._write_targets()
        self._snapshot_md.signed.meta["targets.json"] = MetaFile(self._targets_md.signed.version)
        self._write_snapshot()
        self._timestamp_md.signed.snapshot_meta = MetaFile(self._snapshot_md.signed.version)
        self._write_timestamp()

    def _import_files(self, step: _Step) -> None:
        """Take a repository that kept its metadata only in files into the database."""
        for path in sorted(
            self.metadata_dir.glob("*.root.json"), key=lambda p: int(p.name.split(".", 1)[0])
        ):
            data = path.read_bytes()
            step.signed.append((Root.type, Metadata[Root].from_bytes(data).signed.version, data))
        timestamp_data = (self.metadata_dir / "timestamp.json").read_bytes()
        timestamp = Metadata[Timestamp].from_bytes(timestamp_data)
        snapshot_version = timestamp.signed.snapshot_meta.version
        snapshot_data = (self.metadata_dir / f"{snapshot_version}.snapshot.json").read_bytes()
        snapshot = Metadata[Snapshot].from_bytes(snapshot_data)
        targets_version = snapshot.signed.meta["targets.json"].version
        targets_data = (self.metadata_dir / f"{targets_version}.targets.json").read_bytes()
        step.signed += [
            (Targets.type, targets_version, targets_data),
            (Snapshot.type, snapshot_version, snapshot_data),
            (Timestamp.type, timestamp.signed.version, timestamp_data),
        ]

    # -- writing -----------------------------------------------------------------

    def _signers(self, role: str) -> list[Signer]:
        """Available signers whose keys the current root lists for ``role``."""
        allowed = set(self._root_md.signed.roles[role].keyids)
        return [s for s in self.keyring.signers(role) if s.public_key.keyid in allowed]

    def _sign(self, md: Metadata[Any], extra: list[Signer] | None = None) -> bytes:
        """Sign ``md`` with its role's keys and record it for the current step to publish."""
        step = self._current
        if step is None:
            raise RuntimeError("signing outside a repository step")
        role, version = md.signed.type, md.signed.version
        floor = step.floor(role)
        # A device trusting version N of a role refuses to go back below it, and for
        # timestamp, snapshot and targets ignores another N. A root at or below N it
        # never fetches (it asks for N + 1): only a bump, filling in the chain for
        # devices further behind, signs one.
        if version <= floor and not (role == Root.type and step.filling_root_chain):
            raise TrustFloorError(role, version, floor, step.floors[role][1])
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
        data = md.to_bytes()
        step.signed.append((role, version, data))
        return data

    def _write_root(self, extra: list[Signer] | None = None) -> None:
        self._sign(self._root_md, extra)

    def _write_targets(self) -> None:
        self._sign(self._targets_md)

    def _write_snapshot(self) -> None:
        self._sign(self._snapshot_md)

    def _write_timestamp(self) -> None:
        # Devices raise their time floor to this signed signing time (edgefleet.trust).
        self._timestamp_md.signed.unrecognized_fields[ISSUED_FIELD] = _now().isoformat()
        self._sign(self._timestamp_md)

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

    def _behind(self, step: _Step) -> list[str]:
        state = self._state
        current = {
            md.signed.type: md.signed.version
            for md in (state.root, state.targets, state.snapshot, state.timestamp)
            if md is not None
        }
        return [role for role in ROLES if current.get(role, 0) < step.floor(role)]

    def _resign_past_floors(self, step: _Step, *, root_required: bool = True) -> None:
        """New versions of every online role above what any device trusts; root too when a
        device trusts a root version the repository does not have (each missing version, up
        to the one devices trust: they keep theirs and follow the chain from it)."""
        now = _now()
        root = self._root_md.signed
        behind = root.version < step.floor(Root.type)
        threshold = root.roles[Root.type].threshold
        if behind and not root_required and len(self._signers(Root.type)) < threshold:
            # Root keys offline: the online roles still move on (a timestamp must not
            # expire for want of them); ``edgefleet repo bump`` signs root where they are.
            logger.error(
                "root is behind what devices trust and its keys are not here: run "
                "`edgefleet repo bump` where they are root_version=%d trusted=%d",
                root.version,
                step.floor(Root.type),
            )
            behind = False
        step.filling_root_chain = True
        while behind and root.version < step.floor(Root.type):
            root.version += 1
            root.expires = now + EXPIRY[Root.type]
            self._write_root()
        step.filling_root_chain = False
        targets = self._targets_md.signed
        targets.version = max(targets.version, step.floor(Targets.type)) + 1
        targets.expires = now + EXPIRY[Targets.type]
        self._write_targets()
        snapshot = self._snapshot_md.signed
        snapshot.version = max(snapshot.version, step.floor(Snapshot.type))
        timestamp = self._timestamp_md.signed
        timestamp.version = max(timestamp.version, step.floor(Timestamp.type))
        self._bump_snapshot_and_timestamp(now)

    # -- public operations -------------------------------------------------------

    def add_target(self, target_path: str, data: bytes, custom: dict[str, Any]) -> TargetFile:
        """Store ``data`` as target ``target_path`` and sign new targets/snapshot/timestamp."""
        if not FILE_NAME_RE.fullmatch(target_path):
            raise InvalidRequestError(f"invalid target path {target_path!r}")
        target = TargetFile.from_data(target_path, data, ["sha256"])
        target.unrecognized_fields["custom"] = dict(custom)
        atomic_write(self.targets_dir / f"{target.hashes['sha256']}.{target_path}", data)
        with self._step():
            now = _now()
            targets = self._targets_md.signed
            listed = targets.targets.get(target_path)
            if listed is not None and listed.hashes != target.hashes:
                raise ConflictError(f"target {target_path} is already signed with other content")
            targets.targets[target_path] = target
            targets.version += 1
            targets.expires = now + EXPIRY[Targets.type]
            self._write_targets()
            self._bump_snapshot_and_timestamp(now)
            version = targets.version
        logger.info("tuf target added target=%s targets_version=%d", target_path, version)
        return target

    def refresh_timestamp(self, min_remaining: timedelta = timedelta(hours=6)) -> bool:
        """Re-sign roles close to expiry; True when anything was re-signed.

        The timestamp is re-signed when less than ``min_remaining`` of it is left;
        snapshot and targets when less than a third of their lifetime (or
        ``min_remaining``, if longer) is left. A repository behind what devices
        trust is bumped past them instead.
        """
        with self._step() as step:
            now = _now()
            if self._behind(step):
                logger.warning("tuf repository behind what devices trust: re-signing past them")
                self._resign_past_floors(step, root_required=False)
                return True

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
            return changed

    def behind(self) -> list[str]:
        """Roles whose latest version is below what some device trusts (after a restore)."""
        with self._step() as step:
            return self._behind(step)

    def bump(self, *, root_required: bool = True) -> dict[str, int]:
        """Re-sign every role past the highest version devices trust; the new versions.

        Root is re-signed (each missing version up to the one devices trust, needing
        the root keys' threshold) only when a device trusts a root version the
        repository lacks; with ``root_required`` off, missing root keys are logged and
        the other roles bumped all the same.
        """
        with self._step() as step:
            self._resign_past_floors(step, root_required=root_required)
            versions = {role: version for role, version, _ in step.signed}
        logger.warning("tuf repository bumped past what devices trust versions=%s", versions)
        return versions

    def versions(self) -> dict[str, dict[str, Any]]:
        """Per role: the latest signed version and the highest a device reported trusting."""
        with Session(self._engine) as session:
            state = _latest(session)
            floors = trust_floors(session)
        result: dict[str, dict[str, Any]] = {}
        for md in (state.root, state.targets, state.snapshot, state.timestamp):
            if md is None:
                continue
            role = md.signed.type
            floor, device_id = floors.get(role, (None, None))
            result[role] = {
                "version": md.signed.version,
                "expires": md.signed.expires.isoformat(),
                "device_trusts": floor,
                "reported_by": device_id,
            }
        return result

    def root_bytes(self) -> bytes:
        """The current signed root metadata, as served to devices at enrolment."""
        with Session(self._engine) as session:
            data = session.exec(
                select(RepositoryMetadata.data)
                .where(RepositoryMetadata.role == Root.type)
                .order_by(col(RepositoryMetadata.version).desc())
                .limit(1)
            ).first()
        if data is None:
            raise RuntimeError("repository not initialised: call init_or_load()")
        return bytes(data)

    @property
    def targets_version(self) -> int:
        """The latest signed targets version (as every replica sees it)."""
        with Session(self._engine) as session:
            version = session.exec(
                select(func.max(RepositoryMetadata.version)).where(
                    RepositoryMetadata.role == Targets.type
                )
            ).one()
        return int(version or 0)

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
        return _initialised(self._state.root)

    @property
    def _targets_md(self) -> Metadata[Targets]:
        return _initialised(self._state.targets)

    @property
    def _snapshot_md(self) -> Metadata[Snapshot]:
        return _initialised(self._state.snapshot)

    @property
    def _timestamp_md(self) -> Metadata[Timestamp]:
        return _initialised(self._state.timestamp)


def _initialised(md: _Md | None) -> _Md:
    """``md`` from the current step's view; a repository without it was never initialised."""
    if md is None:
        raise RuntimeError("repository not initialised: call init_or_load()")
    return md
