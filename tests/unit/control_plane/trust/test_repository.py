"""The signed TUF repository, verified end to end by python-tuf's own client."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError, RepositoryError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.ngclient import FetcherInterface, Updater

from edgefleet.control_plane.core.errors import InvalidRequestError, NotFoundError
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.trust import ISSUED_FIELD, issued_at

PREFIX = "mqtt://repo/"
CUSTOM = {
    "bundle_id": "digits-1-x86-64-gateway-onnx-r1",
    "release": 1,
    "model": "digits",
    "model_version": "1",
    "profiles": ["x86-64-gateway-onnx"],
    "hardware": ["x86_64"],
}


class RepositoryFetcher(FetcherInterface):
    """Serves ``mqtt://repo/<path>`` from the repository's own chunk reader."""

    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = url.removeprefix(PREFIX)
        try:
            data, _total = self.repository.read_chunk(path, 0, 1 << 30)
        except NotFoundError as e:
            raise DownloadHTTPError(str(e), 404) from e
        return iter([data])


def make_updater(repository: SignedRepository, client_dir: Path) -> Updater:
    metadata_dir = client_dir / "metadata"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(exist_ok=True)
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{PREFIX}metadata/",
        target_dir=str(client_dir / "targets"),
        target_base_url=f"{PREFIX}targets/",
        fetcher=RepositoryFetcher(repository),
        bootstrap=repository.root_bytes(),
    )


def repository_root(repository: SignedRepository) -> Root:
    return Metadata[Root].from_bytes(repository.root_bytes()).signed


@pytest.fixture
def repository(tmp_path: Path) -> SignedRepository:
    repo = SignedRepository(tmp_path / "repository")
    repo.init_or_load()
    return repo


def test_client_verifies_and_downloads_added_target(
    repository: SignedRepository, tmp_path: Path
) -> None:
    data = b"bundle bytes" * 100
    repository.add_target("b1.tar", data, CUSTOM)

    updater = make_updater(repository, tmp_path / "client")
    updater.refresh()
    info = updater.get_targetinfo("b1.tar")
    assert info is not None
    assert info.custom == CUSTOM
    path = updater.download_target(info)
    assert Path(path).read_bytes() == data


def test_client_rejects_tampered_target(repository: SignedRepository, tmp_path: Path) -> None:
    target = repository.add_target("b1.tar", b"original bytes", CUSTOM)
    stored = repository.targets_dir / f"{target.hashes['sha256']}.b1.tar"
    stored.write_bytes(b"Original bytes")

    updater = make_updater(repository, tmp_path / "client")
    updater.refresh()
    info = updater.get_targetinfo("b1.tar")
    assert info is not None
    with pytest.raises(RepositoryError):
        updater.download_target(info)


def test_targets_version_goes_up_on_each_added_target(repository: SignedRepository) -> None:
    versions = [repository.targets_version]
    for n in range(3):
        repository.add_target(f"b{n}.tar", f"data {n}".encode(), CUSTOM)
        versions.append(repository.targets_version)
    assert versions == sorted(set(versions))
    assert (repository.metadata_dir / f"{versions[-1]}.targets.json").exists()


def test_repository_reloads_same_key_and_versions_after_restart(
    repository: SignedRepository, tmp_path: Path
) -> None:
    repository.add_target("b1.tar", b"one", CUSTOM)
    root_before = repository.root_bytes()
    key_files = list(repository.keyring.keys_dir.glob("*.pem"))
    assert len(key_files) == 6  # 3 root, targets, snapshot, timestamp
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in key_files)

    reopened = SignedRepository(repository.root_dir)
    reopened.init_or_load()
    assert reopened.root_bytes() == root_before
    assert reopened.targets_version == repository.targets_version
    reopened.add_target("b2.tar", b"two", CUSTOM)

    updater = make_updater(reopened, tmp_path / "client")
    updater.refresh()
    assert updater.get_targetinfo("b1.tar") is not None
    assert updater.get_targetinfo("b2.tar") is not None


def test_refresh_timestamp_resigns_only_when_close_to_expiry(
    repository: SignedRepository, tmp_path: Path
) -> None:
    assert repository.refresh_timestamp(timedelta(hours=1)) is False
    assert repository.refresh_timestamp(timedelta(days=2)) is True

    updater = make_updater(repository, tmp_path / "client")
    updater.refresh()


@pytest.mark.parametrize(
    "path",
    ["metadata/../keys/online.pem", "keys/online.pem", "metadata/.hidden", "targets/", "x"],
)
def test_read_chunk_refuses_paths_outside_the_served_directories(
    repository: SignedRepository, path: str
) -> None:
    with pytest.raises(InvalidRequestError):
        repository.read_chunk(path, 0, 10)


def test_read_chunk_returns_slice_and_total(repository: SignedRepository) -> None:
    whole = repository.root_bytes()
    chunk, total = repository.read_chunk("metadata/1.root.json", 5, 10)
    assert (chunk, total) == (whole[5:15], len(whole))
    with pytest.raises(NotFoundError):
        repository.read_chunk("metadata/9.root.json", 0, 10)


def test_every_signed_timestamp_carries_its_signing_time_under_the_signature(
    repository: SignedRepository, tmp_path: Path
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    repository.add_target("b1.tar", b"bundle bytes", CUSTOM)
    updater = make_updater(repository, tmp_path / "client")
    updater.refresh()  # ngclient verified (and persisted) the stamped timestamp
    verified = (tmp_path / "client" / "metadata" / "timestamp.json").read_bytes()
    issued = issued_at(verified)
    assert issued is not None and before <= issued <= datetime.now(UTC)

    root = repository_root(repository)
    genuine = Metadata[Timestamp].from_bytes(verified)
    root.verify_delegate(Timestamp.type, genuine.signed_bytes, genuine.signatures)
    tampered = json.loads(verified)
    tampered["signed"][ISSUED_FIELD] = (issued - timedelta(days=30)).isoformat()
    md = Metadata[Timestamp].from_dict(tampered)
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate(Timestamp.type, md.signed_bytes, md.signatures)
