"""Back up and restore a control plane: its database, signed repository and key material.

A backup is one tar archive:

* ``manifest.json``: the format, the edgefleet version, the database's dialect and
  schema revision, the repository's metadata versions, and the sha256 and size of
  every other member;
* ``database.sqlite`` (SQLite, through the online backup API) or ``database.pgdump``
  (PostgreSQL, ``pg_dump --format=custom``);
* ``files/<part>/...``: the signed repository (``repository/``: metadata, targets and
  the keys, copied as they are, so encrypted keys stay encrypted), registered models,
  built bundles, and the CA and broker-auth directories when set.

The database and the repository are copied under the repository lock (the
``repository_lock`` row every signing step writes first), so no replica signs while
they are read: the metadata in the database and the files agree. Bundle files are
immutable and named by their hash, so those listed under the lock are copied after it.

A restore puts everything back, then keeps the repository ahead of what devices
already trust: every version the replaced repository had signed, and every version a
device had reported trusting, becomes a trust floor, and the repository is re-signed
past them (``SignedRepository.bump``). A device that trusts newer metadata than the
backup still accepts the next update. Restore with the control plane stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, func, inspect, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlmodel import Session, SQLModel, col, select

from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import ControlPlaneError
from edgefleet.control_plane.core.migrate import current_revision, head_revision
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import RepositoryLock, RepositoryMetadata, TrustFloor
from edgefleet.control_plane.trust.repository.state import raise_trust_floor

__all__ = ["BackupError", "BackupManifest", "backup", "restore"]

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
ROLES = ("root", "targets", "snapshot", "timestamp")
# The name a floor carried over from the replaced repository is reported under.
PREVIOUS_REPOSITORY = "restore:replaced-repository"


class BackupError(ControlPlaneError):
    """A backup could not be written, or an archive cannot be restored."""


@dataclass
class BackupManifest:
    created_at: str
    edgefleet_version: str
    dialect: str
    schema_revision: str | None
    repository_versions: dict[str, int]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BackupManifest:
        raw = json.loads(data)
        if raw.get("format") != FORMAT:
            raise BackupError(f"unknown backup format {raw.get('format')!r}")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def _edgefleet_version() -> str:
    try:
        return importlib_metadata.version("edgefleet")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _file_parts(settings: Settings) -> dict[str, Path]:
    """The directories a backup carries, by their name in the archive."""
    parts = {
        "repository": settings.repository_dir,
        "models": settings.models_dir,
        "bundles": settings.bundles_dir,
    }
    if settings.pki_dir is not None:
        parts["pki"] = settings.pki_dir
    if settings.broker_auth_dir is not None:
        parts["broker-auth"] = settings.broker_auth_dir
    return parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI for pg_dump/pg_restore, and the environment carrying the password."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not on PATH: install the PostgreSQL client tools (the same major "
            "version as the server) to back up or restore a PostgreSQL database"
        )
    return found


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed: {result.stderr.strip()[-2000:]}")


@contextmanager
def _repository_locked(engine: Engine) -> Iterator[None]:
    """Hold the repository lock row (no replica signs) for the block's duration."""
    with Session(engine) as session:
        if inspect(engine).has_table("repository_lock"):
            session.execute(
                update(RepositoryLock)
                .where(col(RepositoryLock.id) == 1)
                .values(steps=RepositoryLock.steps + 1)
            )
        try:
            yield
        finally:
            session.rollback()


def _database_versions(engine: Engine) -> dict[str, int]:
    """The highest version of each role signed into the database, and any floor above."""
    versions: dict[str, int] = {}
    inspector = inspect(engine)
    with Session(engine) as session:
        if inspector.has_table("repository_metadata"):
            rows = session.exec(
                select(RepositoryMetadata.role, func.max(RepositoryMetadata.version)).group_by(
                    RepositoryMetadata.role
                )
            ).all()
            versions.update({role: int(v) for role, v in rows if v is not None})
        if inspector.has_table("trust_floor"):
            for floor in session.exec(select(TrustFloor)).all():
                versions[floor.role] = max(versions.get(floor.role, 0), floor.version)
    return versions


def _file_versions(metadata_dir: Path) -> dict[str, int]:
    """The versions of the metadata files published under ``metadata_dir``."""
    versions: dict[str, int] = {}
    if not metadata_dir.is_dir():
        return versions
    for path in metadata_dir.glob("*.json"):
        try:
            signed = json.loads(path.read_bytes())["signed"]
            role, version = signed["_type"], int(signed["version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if role in ROLES:
            versions[role] = max(versions.get(role, 0), version)
    return versions


def _dump_database(settings: Settings, engine: Engine, to: Path) -> str:
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        name = "database.sqlite"
        live, copy = sqlite3.connect(str(url.database)), sqlite3.connect(to / name)
        try:
            live.backup(copy)
        finally:
            live.close()
            copy.close()
        return name
    if url.get_backend_name() == "postgresql":
        name = "database.pgdump"
        uri, env = _libpq(url)
        _run([_pg_tool("pg_dump"), "--format=custom", f"--file={to / name}", uri], env)
        return name
    raise BackupError(f"no backup for a {url.get_backend_name()} database")


def backup(*, settings: Settings, path: Path) -> BackupManifest:
    """Write a backup of the control plane described by ``settings`` to ``path``."""
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            revision = current_revision(connection)
        with tempfile.TemporaryDirectory(prefix="edgefleet-backup-") as scratch:
            staging = Path(scratch)
            files: list[tuple[str, Path]] = []
            later: list[tuple[str, Path]] = []
            with _repository_locked(engine):
                database = _dump_database(settings, engine, staging)
                versions = _file_versions(settings.repository_dir / "metadata")
                for part, root in _file_parts(settings).items():
                    if not root.is_dir():
                        continue
                    for source in sorted(p for p in root.rglob("*") if p.is_file()):
                        name = f"files/{part}/{source.relative_to(root).as_posix()}"
                        if part in ("repository",) and "targets" not in source.parts:
                            copy = staging / name
                            copy.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(source, copy)  # metadata and keys, as they are
                            files.append((name, copy))
                        else:
                            later.append((name, source))  # immutable, hash-named files
            manifest = BackupManifest(
                created_at=datetime.now(UTC).isoformat(),
                edgefleet_version=_edgefleet_version(),
                dialect=engine.dialect.name,
                schema_revision=revision,
                repository_versions=versions,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            try:
                with tarfile.open(partial, "w") as archive:
                    for name, source in [(database, staging / database), *files, *later]:
                        if not source.exists():  # removed since it was listed
                            continue
                        manifest.members[name] = {
                            "sha256": _sha256(source),
                            "size": source.stat().st_size,
                        }
                        archive.add(source, arcname=name, recursive=False)
                    data = manifest.to_json()
                    info = tarfile.TarInfo(MANIFEST)
                    info.size = len(data)
                    info.mtime = int(datetime.now(UTC).timestamp())
                    info.mode = 0o600
                    with tempfile.TemporaryFile() as f:
                        f.write(data)
                        f.seek(0)
                        archive.addfile(info, f)
                with partial.open("rb") as written:
                    os.fsync(written.fileno())
                os.chmod(partial, 0o600)  # it holds token hashes and key material
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    except (OSError, tarfile.TarError, sqlite3.Error) as e:
        raise BackupError(f"backup to {path} failed: {e}") from e
    finally:
        engine.dispose()
    logger.info("backup written path=%s members=%d", path, len(manifest.members))
    return manifest


def read_manifest(path: Path) -> BackupManifest:
    try:
        with tarfile.open(path, "r") as archive:
            member = archive.extractfile(MANIFEST)
            if member is None:
                raise BackupError(f"{path} has no {MANIFEST}")
            return BackupManifest.from_json(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as e:
        raise BackupError(f"{path} is not an edgefleet backup: {e}") from e


def _extract_verified(path: Path, manifest: BackupManifest, to: Path) -> None:
    """Extract every member the manifest lists, checking its hash; nothing else."""
    with tarfile.open(path, "r") as archive:
        for name, expected in manifest.members.items():
            member = archive.getmember(name)
            target = (to / name).resolve()
            if not member.isfile() or not target.is_relative_to(to.resolve()):
                raise BackupError(f"unsafe member {name!r} in {path}")
            source = archive.extractfile(member)
            assert source is not None
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                shutil.copyfileobj(source, out)
            if _sha256(target) != expected["sha256"]:
                raise BackupError(f"{name} in {path} does not match its sha256 in the manifest")


def _restore_database(settings: Settings, manifest: BackupManifest, staging: Path) -> None:
    url = make_url(settings.sqlalchemy_url)
    backend = url.get_backend_name()
    if backend != manifest.dialect:
        raise BackupError(
            f"the backup holds a {manifest.dialect} database; EDGEFLEET_DATABASE_URL is {backend}"
        )
    if backend == "sqlite":
        target = Path(str(url.database))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        source, dest = sqlite3.connect(staging / "database.sqlite"), sqlite3.connect(target)
        try:
            source.backup(dest)
        finally:
            source.close()
            dest.close()
        os.chmod(target, 0o600)
        return
    uri, env = _libpq(url)
    tool = _pg_tool("pg_restore")
    _drop_edgefleet_tables(settings)  # tables newer than the backup must go too
    args = [tool, "--no-owner", "--no-acl", "--single-transaction"]
    _run([*args, f"--dbname={uri}", str(staging / "database.pgdump")], env)


def _drop_edgefleet_tables(settings: Settings) -> None:
    """Drop this release's tables (and the revision table) from the database, if there."""
    engine = make_engine(settings)
    try:
        present = MetaData()
        names = {*SQLModel.metadata.tables, "alembic_version"}
        present.reflect(engine, only=lambda name, _meta: name in names)
        with engine.begin() as connection:
            present.drop_all(connection)
    finally:
        engine.dispose()


def _replace_dir(restored: Path, target: Path, stamp: str) -> Path | None:
    """Move ``target`` aside (kept, named by ``stamp``) and put ``restored`` there."""
    aside = None
    if target.exists():
        aside = target.with_name(f"{target.name}.before-restore-{stamp}")
        os.replace(target, aside)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(restored, target)
    return aside


@dataclass
class RestoreResult:
    manifest: BackupManifest
    floors: dict[str, int]
    bumped: dict[str, int]
    moved_aside: list[Path]
    bump_error: str | None = None


def restore(*, settings: Settings, path: Path) -> RestoreResult:
    """Restore the backup at ``path`` over the control plane described by ``settings``.

    Run it with the control plane stopped. The database and directories it replaces
    are first read for the versions they had signed; the restored repository is then
    re-signed past those and past every version a device reported trusting.
    """
    from edgefleet.control_plane.trust.keyring import SigningError
    from edgefleet.control_plane.trust.repository import SignedRepository

    manifest = read_manifest(path)
    revision = manifest.schema_revision
    known = revision is None or _known_revision(revision)
    if not known:
        raise BackupError(
            f"the backup's schema revision {revision} is newer than this edgefleet knows "
            f"(head {head_revision()}): restore it with the release that wrote it"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    engine = make_engine(settings)
    try:
        floors = _database_versions(engine)
        for role, version in _file_versions(settings.repository_dir / "metadata").items():
            floors[role] = max(floors.get(role, 0), version)
    finally:
        engine.dispose()
    moved: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(
            prefix=".edgefleet-restore-", dir=settings.data_dir.parent
        ) as scratch:
            staging = Path(scratch)
            _extract_verified(path, manifest, staging)
            _restore_database(settings, manifest, staging)
            for part, target in _file_parts(settings).items():
                restored = staging / "files" / part
                if restored.is_dir():
                    aside = _replace_dir(restored, target, stamp)
                    if aside is not None:
                        moved.append(aside)
    except (OSError, tarfile.TarError, sqlite3.Error) as e:
        raise BackupError(f"restore from {path} failed: {e}") from e

    engine = make_engine(settings)
    try:
        create_db_and_tables(engine)  # a backup from an older release is upgraded
        with Session(engine) as session:
            raise_trust_floor(session=session, device_id=PREVIOUS_REPOSITORY, versions=floors)
            session.commit()
        repository = SignedRepository(
            settings.repository_dir,
            engine=engine,
            passphrase=settings.key_passphrase_bytes,
            replica="restore",
        )
        repository.init_or_load()
        bump_error = None
        try:
            bumped = repository.bump()
        except SigningError as e:
            bumped, bump_error = repository.bump(root_required=False), str(e)
    finally:
        engine.dispose()
    logger.warning(
        "restored path=%s floors=%s bumped=%s moved_aside=%s", path, floors, bumped, moved
    )
    return RestoreResult(manifest, floors, bumped, moved, bump_error)


def _known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    from edgefleet.control_plane.core.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return any(rev.revision == revision for rev in script.walk_revisions())
