"""One signed truth for several replicas, and what devices already trust after a restore.

Two ``SignedRepository`` instances stand for two control-plane replicas: one
database (SQLite here; PostgreSQL in tests/integration/control_plane/test_repository_replicas.py)
and one shared directory. python-tuf's own client judges what they publish.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tuf.api.exceptions import BadVersionNumberError, DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from edgefleet.agent.verification.transport import trusted_versions, tuf_metadata_dir
from edgefleet.control_plane.core.errors import ConflictError, NotFoundError
from edgefleet.control_plane.core.tables import RepositoryMetadata
from edgefleet.control_plane.trust.keyring import SigningError
from edgefleet.control_plane.trust.repository import (
    SignedRepository,
    TrustFloorError,
    create_repository_tables,
    raise_trust_floor,
    standalone_engine,
    trust_floors,
)
from edgefleet.messages import DeviceStatus

PREFIX = "mqtt://repo/"
CUSTOM = {"bundle_id": "b", "release": 1}


class RepositoryFetcher(FetcherInterface):
    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            data, _total = self.repository.read_chunk(url.removeprefix(PREFIX), 0, 1 << 30)
        except NotFoundError as e:
            raise DownloadHTTPError(str(e), 404) from e
        return iter([data])


def device(repository: SignedRepository, client_dir: Path) -> Updater:
    """A device's ngclient with a persistent cache (where the agent keeps it), bootstrapped
    from the first root once."""
    metadata_dir = tuf_metadata_dir(client_dir)
    bootstrap = None if (metadata_dir / "root.json").exists() else repository.root_bytes()
    metadata_dir.mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{PREFIX}metadata/",
        target_dir=str(client_dir / "targets"),
        target_base_url=f"{PREFIX}targets/",
        fetcher=RepositoryFetcher(repository),
        bootstrap=bootstrap,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = standalone_engine(tmp_path / "control-plane.db")
    create_repository_tables(engine)
    return engine


def replica(shared: Path, engine: Engine, name: str) -> SignedRepository:
    repository = SignedRepository(shared / "repository", engine=engine, replica=name)
    repository.init_or_load()
    return repository


def test_bundles_signed_alternately_by_two_replicas_are_all_in_the_signed_metadata(
    tmp_path: Path, engine: Engine
) -> None:
    a = replica(tmp_path / "shared", engine, "cp-a")
    b = replica(tmp_path / "shared", engine, "cp-b")  # finds what a created: no new keys
    assert a.root_bytes() == b.root_bytes()
    assert len(list((tmp_path / "shared" / "repository" / "keys").glob("*.pem"))) == 6

    for n in range(4):
        (a if n % 2 == 0 else b).add_target(f"b{n}.tar", f"bundle {n}".encode(), CUSTOM)

    updater = device(b, tmp_path / "device")
    updater.refresh()
    for n in range(4):
        info = updater.get_targetinfo(f"b{n}.tar")
        assert info is not None, f"b{n}.tar missing"
        assert Path(updater.download_target(info)).read_bytes() == f"bundle {n}".encode()
    with Session(engine) as session:
        rows = session.exec(
            select(RepositoryMetadata.role, RepositoryMetadata.version).where(
                RepositoryMetadata.role == "targets"
            )
        ).all()
    assert sorted(v for _, v in rows) == [1, 2, 3, 4, 5]  # each version signed once
    assert a.targets_version == b.targets_version == 5


def test_stale_replica_refresh_never_points_the_timestamp_back(
    tmp_path: Path, engine: Engine
) -> None:
    a = replica(tmp_path / "shared", engine, "cp-a")
    b = replica(tmp_path / "shared", engine, "cp-b")
    b.add_target("b0.tar", b"zero", CUSTOM)
    client = device(a, tmp_path / "device")
    client.refresh()
    a.add_target("b1.tar", b"one", CUSTOM)
    assert b.refresh_timestamp(min_remaining=timedelta(days=2))  # b never saw b1.tar itself

    client = device(a, tmp_path / "device")
    client.refresh()  # a newer timestamp, over the snapshot that lists both
    assert client.get_targetinfo("b0.tar") is not None
    assert client.get_targetinfo("b1.tar") is not None


def test_a_target_name_is_never_signed_again_with_other_content(
    tmp_path: Path, engine: Engine
) -> None:
    a = replica(tmp_path / "shared", engine, "cp-a")
    b = replica(tmp_path / "shared", engine, "cp-b")
    a.add_target("b0.tar", b"zero", CUSTOM)
    with pytest.raises(ConflictError, match="already signed"):
        b.add_target("b0.tar", b"something else", CUSTOM)


def test_restored_repository_refuses_to_sign_below_what_devices_trust_until_bumped(
    tmp_path: Path, engine: Engine
) -> None:
    repository = replica(tmp_path / "shared", engine, "cp-a")
    repository.add_target("b0.tar", b"zero", CUSTOM)
    backup = tmp_path / "backup.db"
    live, copy = sqlite3.connect(tmp_path / "control-plane.db"), sqlite3.connect(backup)
    live.backup(copy)
    live.close()
    copy.close()
    repository.add_target("b1.tar", b"one", CUSTOM)
    repository.add_target("b2.tar", b"two", CUSTOM)
    device(repository, tmp_path / "device").refresh()
    trusted = trusted_versions(tmp_path / "device")  # what the agent reports in its status
    assert trusted is not None and trusted["targets"] == repository.targets_version

    # Restore: the database goes back to the backup; the shared files stay newer.
    engine.dispose()
    shutil.copyfile(backup, tmp_path / "control-plane.db")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"control-plane.db{suffix}").unlink(missing_ok=True)
    restored = replica(tmp_path / "shared", engine, "cp-a")
    assert restored.targets_version < trusted["targets"]
    with pytest.raises(BadVersionNumberError):
        device(restored, tmp_path / "device").refresh()  # locked out

    # The device says what it trusts; the repository will not sign below it.
    status = DeviceStatus(online=True, trusted_versions=trusted)
    with Session(engine) as session:
        assert status.trusted_versions is not None
        raise_trust_floor(
            session=session, device_id="dev-restore01", versions=status.trusted_versions
        )
        raise_trust_floor(session=session, device_id="dev-older0001", versions={"targets": 1})
        session.commit()
    assert restored.behind() == ["targets", "snapshot", "timestamp"]
    with pytest.raises(TrustFloorError, match="dev-restore01"):
        restored.add_target("b3.tar", b"three", CUSTOM)

    bumped = restored.bump()
    assert bumped["targets"] > trusted["targets"]
    assert bumped["timestamp"] > trusted["timestamp"]
    assert "root" not in bumped  # no device trusts a newer root: root keys stay offline
    restored.add_target("b3.tar", b"three", CUSTOM)
    client = device(restored, tmp_path / "device")
    client.refresh()
    assert client.get_targetinfo("b3.tar") is not None


def test_restore_below_a_trusted_root_signs_every_missing_root_version(
    tmp_path: Path, engine: Engine
) -> None:
    repository = replica(tmp_path / "shared", engine, "cp-a")
    with Session(engine) as session:
        raise_trust_floor(session=session, device_id="dev-rooted001", versions={"root": 3})
        session.commit()
    bumped = repository.bump()
    assert bumped["root"] == 3
    for version in (2, 3):
        assert (repository.metadata_dir / f"{version}.root.json").exists()
    client = device(repository, tmp_path / "device")
    client.refresh()  # follows 1 -> 2 -> 3
    assert trusted_versions(tmp_path / "device") == {
        "root": 3, "timestamp": bumped["timestamp"], "snapshot": bumped["snapshot"],
        "targets": bumped["targets"],
    }  # fmt: skip


def test_start_up_bumps_a_repository_found_behind_what_devices_trust(
    tmp_path: Path, engine: Engine
) -> None:
    repository = replica(tmp_path / "shared", engine, "cp-a")
    before = repository.versions()["timestamp"]["version"]
    with Session(engine) as session:
        raise_trust_floor(session=session, device_id="dev-ahead0001", versions={"timestamp": 7})
        session.commit()
    again = replica(tmp_path / "shared", engine, "cp-b")
    versions = again.versions()
    assert versions["timestamp"]["version"] == 8 > before
    assert versions["timestamp"]["device_trusts"] == 7
    assert versions["timestamp"]["reported_by"] == "dev-ahead0001"


def test_trust_floor_only_goes_up_and_ignores_nonsense(engine: Engine) -> None:
    with Session(engine) as session:
        raise_trust_floor(session=session, device_id="dev-a0000001", versions={"targets": 5})
        raise_trust_floor(session=session, device_id="dev-b0000001", versions={"targets": 3})
        raise_trust_floor(
            session=session,
            device_id="dev-c0000001",
            versions={"mirror": 9, "snapshot": -1, "timestamp": 2**40},
        )
        session.commit()
        assert trust_floors(session) == {"targets": (5, "dev-a0000001")}


def test_root_keys_offline_do_not_stop_the_online_roles_moving_past_devices(
    tmp_path: Path, engine: Engine
) -> None:
    repository = replica(tmp_path / "shared", engine, "cp-a")
    offline = tmp_path / "offline"
    offline.mkdir()
    for key in repository.keyring.keys_dir.glob("root-*.pem"):
        key.rename(offline / key.name)
    with Session(engine) as session:
        raise_trust_floor(
            session=session, device_id="dev-ahead0002", versions={"root": 2, "timestamp": 5}
        )
        session.commit()
    with pytest.raises(SigningError, match="root needs 2 signatures"):
        repository.bump()
    assert repository.refresh_timestamp()  # the scheduled refresh: timestamp past 5 anyway
    versions = repository.versions()
    assert (versions["root"]["version"], versions["timestamp"]["version"]) == (1, 6)
    for key in offline.iterdir():
        key.rename(repository.keyring.keys_dir / key.name)
    assert repository.bump()["root"] == 2  # where the root keys are


def test_repository_that_kept_metadata_only_in_files_is_taken_into_the_database(
    tmp_path: Path, engine: Engine
) -> None:
    before = replica(tmp_path / "shared", engine, "cp-a")
    before.add_target("b0.tar", b"zero", CUSTOM)
    device(before, tmp_path / "device").refresh()
    engine.dispose()
    (tmp_path / "control-plane.db").unlink()  # as before the database held the metadata
    fresh = standalone_engine(tmp_path / "control-plane.db")
    create_repository_tables(fresh)

    after = replica(tmp_path / "shared", fresh, "cp-a")
    assert after.versions()["targets"]["version"] == 2
    after.add_target("b1.tar", b"one", CUSTOM)  # same keys, versions carry on
    client = device(after, tmp_path / "device")
    client.refresh()
    assert client.get_targetinfo("b0.tar") is not None
    assert client.get_targetinfo("b1.tar") is not None
