"""Role keys, thresholds, rotation and revocation of the signed repository.

A client is python-tuf's ngclient reading the repository's files, as the agent
does over MQTT: what it accepts here is what a device would accept.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadHTTPError, RepositoryError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.trust.keyring import SigningError
from edgefleet.control_plane.trust.repository import SignedRepository

PREFIX = "mqtt://repo/"


class RepositoryFetcher(FetcherInterface):
    """Serves the repository's files the way the fleet link does, without MQTT."""

    def __init__(self, repository: SignedRepository) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            data, _total = self.repository.read_chunk(url.removeprefix(PREFIX), 0, 1 << 30)
        except NotFoundError as e:
            raise DownloadHTTPError(str(e), 404) from e
        return iter([data])


CUSTOM = {"bundle_id": "b", "release": 1}


def keyids(repository: SignedRepository, role: str) -> list[str]:
    (summary,) = [r for r in repository.keys_summary() if r["role"] == role]
    return [k["keyid"] for k in summary["keys"]]


def client(repository: SignedRepository, client_dir: Path, bootstrap: bytes | None) -> Updater:
    """An ngclient with a persistent cache in ``client_dir`` (bootstrapped once)."""
    metadata_dir = client_dir / "metadata"
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
def repository(tmp_path: Path) -> SignedRepository:
    repo = SignedRepository(tmp_path / "repository", passphrase=b"correct horse")
    repo.init_or_load()
    return repo


def test_new_repository_has_two_of_three_root_and_a_key_per_online_role(
    repository: SignedRepository,
) -> None:
    summary = {r["role"]: r for r in repository.keys_summary()}
    assert summary["root"]["threshold"] == 2
    assert len(summary["root"]["keys"]) == 3
    for role in ("targets", "snapshot", "timestamp"):
        assert summary[role]["threshold"] == 1
        assert len(summary[role]["keys"]) == 1
    all_keyids = [k["keyid"] for r in summary.values() for k in r["keys"]]
    assert len(set(all_keyids)) == 6  # no key shared between roles


def test_private_keys_are_encrypted_at_rest_and_need_the_passphrase(
    repository: SignedRepository,
) -> None:
    for pem in repository.keyring.keys_dir.glob("*.pem"):
        assert b"ENCRYPTED PRIVATE KEY" in pem.read_bytes()
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    wrong = SignedRepository(repository.root_dir, passphrase=b"wrong")
    wrong.init_or_load()
    with pytest.raises(SigningError, match="passphrase"):
        wrong.add_target("b.tar", b"x", CUSTOM)


def test_device_offline_across_several_rotations_follows_the_root_chain(
    repository: SignedRepository, tmp_path: Path
) -> None:
    first_root = repository.root_bytes()
    repository.add_target("b1.tar", b"one", CUSTOM)
    client(repository, tmp_path / "device", first_root).refresh()

    root_keys = keyids(repository, "root")
    repository.rotate_key("root", root_keys[0])
    repository.rotate_key("root", root_keys[1])
    repository.rotate_key("timestamp")
    repository.rotate_key("targets")
    repository.add_target("b2.tar", b"two", CUSTOM)

    updater = client(repository, tmp_path / "device", None)
    updater.refresh()
    assert updater.get_targetinfo("b2.tar") is not None
    trusted = Metadata[Root].from_file(str(tmp_path / "device" / "metadata" / "root.json"))
    assert trusted.signed.version == 5
    assert set(root_keys[:2]).isdisjoint(trusted.signed.roles["root"].keyids)


def test_root_signed_only_by_new_keys_is_refused(
    repository: SignedRepository, tmp_path: Path
) -> None:
    client(repository, tmp_path / "device", repository.root_bytes()).refresh()
    forged = Metadata[Root].from_bytes(repository.root_bytes())
    attacker = [CryptoSigner.generate_ed25519() for _ in range(3)]
    forged.signed.roles["root"].keyids = []
    for signer in attacker:
        forged.signed.add_key(signer.public_key, "root")
    forged.signed.version += 1
    forged.signatures.clear()
    for signer in attacker:
        forged.sign(signer, append=True)
    (repository.metadata_dir / "2.root.json").write_bytes(forged.to_bytes())
    with pytest.raises(UnsignedMetadataError):
        client(repository, tmp_path / "device", None).refresh()


def test_one_signature_copied_many_times_does_not_meet_the_threshold(
    repository: SignedRepository, tmp_path: Path
) -> None:
    client(repository, tmp_path / "device", repository.root_bytes()).refresh()
    root_keys = keyids(repository, "root")
    repository.rotate_key("root", root_keys[0])
    path = repository.metadata_dir / "2.root.json"
    signed = json.loads(path.read_bytes())
    one = signed["signatures"][0]
    signed["signatures"] = [one, one, one]
    path.write_text(json.dumps(signed))
    with pytest.raises(RepositoryError):
        client(repository, tmp_path / "device", None).refresh()


def test_revoking_below_threshold_is_refused_and_changes_nothing(
    repository: SignedRepository,
) -> None:
    (timestamp_key,) = keyids(repository, "timestamp")
    before = repository.root_bytes()
    with pytest.raises(SigningError, match="threshold"):
        repository.revoke_key(timestamp_key)
    assert repository.root_bytes() == before


def test_root_keys_moved_offline_block_key_changes_but_not_publishing(
    repository: SignedRepository,
) -> None:
    offline = repository.root_dir.parent / "offline"
    offline.mkdir()
    for pem in repository.keyring.keys_dir.glob("root-*.pem"):
        pem.rename(offline / pem.name)
    repository.add_target("b1.tar", b"one", CUSTOM)  # online roles still sign
    with pytest.raises(SigningError, match="root signatures"):
        repository.rotate_key("timestamp")
    # Bringing two of the three back is enough.
    for pem in sorted(offline.glob("*.pem"))[:2]:
        pem.rename(repository.keyring.keys_dir / pem.name)
    repository.rotate_key("timestamp")


def test_external_signing_command_signs_targets(
    repository: SignedRepository, tmp_path: Path
) -> None:
    signer = CryptoSigner.generate_ed25519()
    key_file = tmp_path / "hsm.pem"
    key_file.write_bytes(signer.private_bytes)
    script = (
        "import sys; from cryptography.hazmat.primitives.serialization import "
        "load_pem_private_key as l; k = l(open(sys.argv[1],'rb').read(), None); "
        "print(k.sign(sys.stdin.buffer.read()).hex())"
    )
    (old_targets_key,) = keyids(repository, "targets")
    repository.add_command_key(
        "targets", [sys.executable, "-c", script, str(key_file)], signer.public_key
    )
    repository.revoke_key(old_targets_key)
    repository.add_target("b1.tar", b"one", CUSTOM)
    updater = client(repository, tmp_path / "device", repository.root_bytes())
    updater.refresh()
    assert updater.get_targetinfo("b1.tar") is not None
    summary = {r["role"]: r for r in repository.keys_summary()}
    assert [k["kind"] for k in summary["targets"]["keys"]] == ["command"]


def test_external_signer_returning_a_bad_signature_is_caught(
    repository: SignedRepository,
) -> None:
    signer = CryptoSigner.generate_ed25519()
    bogus = [sys.executable, "-c", "print('00' * 64)"]
    with pytest.raises(SigningError, match="does not verify"):
        repository.add_command_key("targets", bogus, signer.public_key)
        repository.revoke_key(keyids(repository, "targets")[0])
        repository.add_target("b1.tar", b"one", CUSTOM)
