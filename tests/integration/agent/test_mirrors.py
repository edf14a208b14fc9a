"""Repository files from an HTTP mirror: the exported static tree served by a real nginx.

The control plane's ``SignedRepository(static_tree=...)`` exports its metadata and
targets after every signing step; nginx serves that tree (with its own range
support); the device's ``MirrorFetcher`` fetches from it and falls back to MQTT
request/response (a real Mosquitto and ``RecordingResponder``) for what the mirror
does not have. TUF verifies whatever came from where. One broker and one nginx
serve the module; each test exports its own repository under its own prefix.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.errors import VerificationError
from edgefleet.agent.verification.fetcher import MqttFetcher
from edgefleet.agent.verification.mirrors import MirrorFetcher
from edgefleet.agent.verification.tuf_client import TargetVerifier
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.mqtt import MqttLink
from tests.integration.agent.test_blobs import RecordingResponder
from tests.support.nginx import Nginx, nginx_available
from tests.support.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nginx_available(), reason="nginx not installed (scripts/setup.sh)"),
]

TIMEOUT = 20.0
RATE = 512 * 1024  # nginx limit_rate: a 1 MiB target takes ~2 s, long enough to cut


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    root = tmp_path_factory.mktemp("www")
    server = Nginx(root, tmp_path_factory.mktemp("nginx"), rate=RATE)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def mirror_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    instance = MosquittoBroker(tmp_path_factory.mktemp("mirror-broker"))
    instance.start()
    try:
        yield instance
    finally:
        instance.kill()


class Rig:
    """A repository exported under ``www/<prefix>``, its MQTT fallback, and one device."""

    def __init__(self, www: Nginx, broker: MosquittoBroker, tmp_path: Path, size: int) -> None:
        prefix = "m" + os.urandom(4).hex()
        self.tree = www.root / prefix
        self.mirror = f"{www.url}/{prefix}"
        self.bundle = os.urandom(size)
        self.repo = SignedRepository(tmp_path / "repo", static_tree=self.tree)
        self.repo.init_or_load()
        target = self.repo.add_target("m-1.tar", self.bundle, {"release": 1})
        self.name = f"{target.hashes['sha256']}.m-1.tar"
        self.data_dir = tmp_path / "device"
        metadata_dir = self.data_dir / "tuf" / "metadata"
        metadata_dir.mkdir(parents=True)
        (metadata_dir / "root.json").write_bytes(self.repo.root_bytes())
        self.parts = self.data_dir / "downloads" / "parts"
        device_id = "dev-mirr" + os.urandom(4).hex()
        self.cp = MqttLink(client_id=f"cp-{device_id}", broker=broker.address, clean_start=True)
        self.asked = RecordingResponder(self.cp, self.repo).asked
        self.device = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
        mqtt = MqttFetcher(self.device, device_id, chunk_size=32 * 1024, part_dir=self.parts)
        self.fetcher = MirrorFetcher(
            [self.mirror], mqtt, part_dir=self.parts, timeout=10.0, retry_wait=0.5
        )
        for link in (self.cp, self.device):
            link.start()
        for link in (self.cp, self.device):
            assert link.wait_subscribed(TIMEOUT)

    def stop(self) -> None:
        self.device.stop()
        self.cp.stop()


@pytest.fixture
def small(www: Nginx, mirror_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(www, mirror_broker, tmp_path, 100_000)
    yield rig
    rig.stop()


def test_a_target_and_its_metadata_come_from_the_exported_tree_on_nginx(
    small: Rig, www: Nginx
) -> None:
    # The tree is what a mirror needs and nothing secret.
    assert sorted(p.name for p in small.tree.iterdir()) == ["metadata", "targets"]
    assert (small.tree / "targets" / small.name).read_bytes() == small.bundle

    verifier = TargetVerifier(small.data_dir, small.fetcher)
    assert verifier.find("m-1.tar").length == len(small.bundle)
    assert verifier.download().read_bytes() == small.bundle
    # Over MQTT only the probe for a next root, which no mirror has either.
    assert {r.path for r in small.asked} <= {"metadata/2.root.json"}
    served = {uri.rsplit("/", 1)[1] for status, _r, _n, uri in www.requests() if status == 200}
    assert {"timestamp.json", small.name} <= served


def test_a_download_cut_mid_transfer_resumes_with_a_range_request(
    www: Nginx, mirror_broker: MosquittoBroker, tmp_path: Path
) -> None:
    rig = Rig(www, mirror_broker, tmp_path, 1024 * 1024)
    try:
        verifier = TargetVerifier(rig.data_dir, rig.fetcher)
        verifier.find("m-1.tar")
        result: dict[str, object] = {}

        def download() -> None:
            try:
                result["path"] = verifier.download()
            except Exception as e:  # handed to the test thread, which fails on it
                result["error"] = e

        worker = threading.Thread(target=download)
        worker.start()
        part = rig.parts / f"{rig.name}.part"
        held = wait_until(
            lambda: part.exists() and part.stat().st_size, "bytes from nginx", timeout=TIMEOUT
        )
        www.kill()  # every connection cut mid-body
        www.start()
        worker.join(60)
        assert not worker.is_alive()
        assert "error" not in result, result
        assert Path(str(result["path"])).read_bytes() == rig.bundle

        resumed = [(r, n) for s, r, n, uri in www.requests() if s == 206 and rig.name in uri]
        assert len(resumed) == 1
        (header, sent) = resumed[0]
        offset = int(header.removeprefix("bytes=").removesuffix("-"))
        assert offset >= held and sent == len(rig.bundle) - offset  # only the rest again
        assert not [r for r in rig.asked if r.path.startswith("targets/")]
    finally:
        rig.stop()


def test_tampered_bytes_on_the_mirror_are_refused_by_tuf_and_never_resumed_from(
    small: Rig,
) -> None:
    (small.tree / "targets" / small.name).write_bytes(os.urandom(len(small.bundle)))

    verifier = TargetVerifier(small.data_dir, small.fetcher)
    verifier.find("m-1.tar")
    with pytest.raises(VerificationError) as caught:
        verifier.download()
    assert caught.value.error == "LengthOrHashMismatchError"
    small.fetcher.discard_parts()  # what the verifier does on a refusal (ProcessVerifier)
    assert not list(small.parts.glob("*.part"))


def test_a_target_the_mirror_lacks_comes_over_mqtt(small: Rig) -> None:
    (small.tree / "targets" / small.name).unlink()

    verifier = TargetVerifier(small.data_dir, small.fetcher)
    verifier.find("m-1.tar")
    assert verifier.download().read_bytes() == small.bundle
    assert any(r.path == f"targets/{small.name}" for r in small.asked)
