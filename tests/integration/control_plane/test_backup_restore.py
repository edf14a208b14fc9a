"""``edgefleet backup`` and ``restore``: the database, the signed repository and its keys
come back together, and a device that trusts metadata newer than the backup still
accepts the next update."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import AuditEntry, Device
from edgefleet.control_plane.services.backup import BackupError, backup, read_manifest, restore
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.control_plane.trust.repository.state import raise_trust_floor

PASSPHRASE = "correct horse battery staple"


class RepositoryFetcher(FetcherInterface):
    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            data, _ = self.repository.read_chunk(url.removeprefix("mqtt://repo/"), 0, 1 << 30)
        except NotFoundError as e:
            raise DownloadHTTPError(str(e), 404) from e
        return iter([data])


class FakeDevice:
    """A TUF client keeping its trusted metadata on disk, as an agent does."""

    def __init__(self, directory: Path, root: bytes) -> None:
        self.directory = directory
        self.root: bytes | None = root
        (directory / "metadata").mkdir(parents=True)

    def refresh(self, repository: SignedRepository) -> Updater:
        updater = Updater(
            metadata_dir=str(self.directory / "metadata"),
            metadata_base_url="mqtt://repo/metadata/",
            target_dir=str(self.directory),
            target_base_url="mqtt://repo/targets/",
            fetcher=RepositoryFetcher(repository),
            bootstrap=self.root,
        )
        self.root = None  # from now on, what it trusts is on its disk
        updater.refresh()
        return updater

    def trusted_versions(self) -> dict[str, int]:
        return {
            role: json.loads((self.directory / "metadata" / f"{role}.json").read_bytes())["signed"][
                "version"
            ]
            for role in ("root", "timestamp", "snapshot", "targets")
        }


def open_repository(settings: Settings) -> tuple[SignedRepository, object]:
    engine = make_engine(settings)
    create_db_and_tables(engine)
    repository = SignedRepository(
        settings.repository_dir,
        engine=engine,
        passphrase=settings.key_passphrase_bytes,
        root_keys=1,
        root_threshold=1,
    )
    repository.init_or_load()
    return repository, engine


def key_files(settings: Settings) -> dict[str, str]:
    keys = settings.repository_dir / "keys"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in keys.iterdir()}


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Settings(data_dir=tmp_path / "cp", database_url=url, key_passphrase=PASSPHRASE)


def wipe(settings: Settings) -> None:
    if settings.sqlalchemy_url.startswith("postgresql"):
        engine = make_engine(settings)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    shutil.rmtree(settings.data_dir)


def test_restore_over_a_newer_installation_stays_ahead_of_its_devices(
    tmp_path: Path, settings: Settings
) -> None:
    repository, engine = open_repository(settings)
    repository.add_target("a.bin", b"a", {})
    with Session(engine) as s:  # type: ignore[arg-type]
        s.add(Device(id="dev-early", profile="x86-64-gateway-onnx", labels={"k": "v"}))
        s.add(AuditEntry(actor="admin", action="device.create", target="dev-early"))
        s.commit()
    device = FakeDevice(tmp_path / "device", repository.root_bytes())
    device.refresh(repository)
    keys_before = key_files(settings)

    archive = tmp_path / "backup.tar"
    manifest = backup(settings=settings, path=archive)
    assert manifest.repository_versions["targets"] == 2
    assert read_manifest(archive).members == manifest.members
    with tarfile.open(archive) as tar:
        pems = [n for n in tar.getnames() if n.endswith(".pem")]
        assert pems and all(
            b"ENCRYPTED PRIVATE KEY" in tar.extractfile(n).read()  # type: ignore[union-attr]
            for n in pems
        )

    repository.add_target("b.bin", b"b", {})  # signed after the backup
    with Session(engine) as s:  # type: ignore[arg-type]
        s.add(Device(id="dev-late", profile="x86-64-gateway-onnx"))
        s.commit()
    assert device.refresh(repository).get_targetinfo("b.bin") is not None
    trusted = device.trusted_versions()
    engine.dispose()  # type: ignore[attr-defined]

    result = restore(settings=settings, path=archive)  # over the newer installation
    assert result.bump_error is None
    repository, engine = open_repository(settings)
    versions = repository.versions()
    for role in ("targets", "snapshot", "timestamp"):
        assert versions[role]["version"] > trusted[role]
    assert key_files(settings) == keys_before  # the keys, as they were, still encrypted
    with Session(engine) as s:  # type: ignore[arg-type]
        assert [d.id for d in s.exec(select(Device)).all()] == ["dev-early"]
        assert s.exec(select(AuditEntry)).one().target == "dev-early"

    repository.add_target("c.bin", b"c", {})  # the next update
    updater = device.refresh(repository)
    assert updater.get_targetinfo("c.bin") is not None
    assert updater.get_targetinfo("a.bin") is not None
    assert updater.get_targetinfo("b.bin") is None  # not in the backup
    engine.dispose()  # type: ignore[attr-defined]


def test_restore_after_losing_everything_then_devices_report_what_they_trust(
    tmp_path: Path, settings: Settings
) -> None:
    repository, engine = open_repository(settings)
    repository.add_target("a.bin", b"a", {})
    device = FakeDevice(tmp_path / "device", repository.root_bytes())
    archive = tmp_path / "backup.tar"
    backup(settings=settings, path=archive)
    repository.add_target("b.bin", b"b", {})
    repository.add_target("b2.bin", b"b2", {})
    device.refresh(repository)
    trusted = device.trusted_versions()
    engine.dispose()  # type: ignore[attr-defined]
    wipe(settings)

    restore(settings=settings, path=archive)
    repository, engine = open_repository(settings)
    assert repository.versions()["targets"]["version"] < trusted["targets"]
    # The device reconnects and reports what it trusts (its retained status).
    with Session(engine) as s:  # type: ignore[arg-type]
        raise_trust_floor(session=s, device_id="dev-0001", versions=trusted)
        s.commit()
    assert repository.behind()  # signing is refused until it is bumped (edgefleet repo bump)
    repository.bump()
    repository.add_target("c.bin", b"c", {})
    assert device.refresh(repository).get_targetinfo("c.bin") is not None
    engine.dispose()  # type: ignore[attr-defined]


def test_a_tampered_backup_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "cp", key_passphrase=PASSPHRASE)
    _repository, engine = open_repository(settings)
    engine.dispose()  # type: ignore[attr-defined]
    archive = tmp_path / "backup.tar"
    backup(settings=settings, path=archive)
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("root.json"):
                data = data.replace(b'"version"', b'"version" ')
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(BackupError, match="does not match its sha256"):
        restore(settings=settings, path=tampered)


def test_a_postgresql_backup_without_pg_dump_says_so(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "cp", database_url=pg_url, key_passphrase=PASSPHRASE)
    _repository, engine = open_repository(settings)
    engine.dispose()  # type: ignore[attr-defined]
    monkeypatch.setenv("PATH", str(tmp_path))  # no PostgreSQL client tools
    with pytest.raises(BackupError, match="pg_dump is not on PATH"):
        backup(settings=settings, path=tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()
