"""Targets delivered as retained, content-addressed blob chunks, against a real Mosquitto.

The control plane's ``BlobPublisher`` publishes a signed repository's target once;
a device's ``BlobFetcher`` takes it from the broker, with TUF verifying the result
as ever. ``RepositoryResponder`` (the request/response path) records what it is
asked, so a test can tell which bytes came from the broker and which by request.
One broker serves the whole module; each test has its own target (hence its own
topics) and its own device id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet import topics
from edgefleet.agent.errors import VerificationError
from edgefleet.agent.verification.blobs import BlobFetcher
from edgefleet.agent.verification.fetcher import MqttFetcher
from edgefleet.agent.verification.tuf_client import TargetVerifier
from edgefleet.agent.verification.verifier import ProcessVerifier
from edgefleet.control_plane.broker.blobs import BlobPublisher
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.messages import FetchRequest, decode_as
from edgefleet.mqtt import Incoming, MqttLink
from tests.integration.agent.test_fetcher import RepositoryResponder
from tests.support.harness import Inbox
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

CHUNK = 16 * 1024
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    instance = MosquittoBroker(tmp_path_factory.mktemp("blob-broker"))
    instance.start()
    try:
        yield instance
    finally:
        instance.kill()


class RecordingResponder(RepositoryResponder):
    """The request/response path, noting every request it answers."""

    def __init__(self, link: MqttLink, repo: SignedRepository) -> None:
        self.asked: list[FetchRequest] = []
        super().__init__(link, repo)

    def handle(self, incoming: Incoming) -> None:
        self.asked.append(decode_as(incoming.payload, FetchRequest))
        super().handle(incoming)


class Rig:
    """A signed repository with one target, served both ways, and one device's link."""

    def __init__(self, broker: MosquittoBroker, tmp_path: Path, device_id: str, size: int):
        self.bundle = os.urandom(size)
        self.repo = SignedRepository(tmp_path / "repo")
        self.repo.init_or_load()
        target = self.repo.add_target("b-1.tar", self.bundle, {"release": 1})
        self.sha = target.hashes["sha256"]
        self.path = f"targets/{self.sha}.b-1.tar"
        self.data_dir = tmp_path / "device"
        metadata_dir = self.data_dir / "tuf" / "metadata"
        metadata_dir.mkdir(parents=True)
        (metadata_dir / "root.json").write_bytes(self.repo.root_bytes())
        self.parts = self.data_dir / "downloads" / "parts"
        self.cp = MqttLink(client_id=f"cp-{device_id}", broker=broker.address, clean_start=True)
        self.asked = RecordingResponder(self.cp, self.repo).asked
        self.publisher = BlobPublisher(self.cp, self.repo.targets_dir, chunk_size=CHUNK)
        self.publisher.attach()
        self.device = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
        self.mqtt = MqttFetcher(self.device, device_id, chunk_size=CHUNK, part_dir=self.parts)
        self.blobs = BlobFetcher(self.device, self.mqtt, grace=1.0)
        for link in (self.cp, self.device):
            link.start()
        for link in (self.cp, self.device):
            assert link.wait_subscribed(TIMEOUT)

    @property
    def chunks(self) -> int:
        return -(-len(self.bundle) // CHUNK)

    def target_requests(self) -> list[FetchRequest]:
        return [r for r in self.asked if r.path.startswith("targets/")]

    def stop(self) -> None:
        self.device.stop()
        self.cp.stop()


@pytest.fixture
def rig(shared_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    device_id = "dev-blob" + os.urandom(4).hex()
    rig = Rig(shared_broker, tmp_path, device_id, 5 * CHUNK + 123)
    yield rig
    rig.stop()


def test_a_published_target_reaches_the_device_from_the_broker_without_chunk_requests(
    rig: Rig,
) -> None:
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    assert rig.publisher.counters.bytes_published >= len(rig.bundle)

    verifier = TargetVerifier(rig.data_dir, rig.blobs)
    assert verifier.find("b-1.tar").length == len(rig.bundle)
    assert verifier.download().read_bytes() == rig.bundle
    assert rig.target_requests() == []  # metadata by request; every target byte from blobs
    assert rig.blobs.chunks_from_blobs == rig.chunks
    assert not list(rig.parts.glob("*.part"))
    # Published once: a second ensure (the next offer) sends nothing.
    sent = rig.publisher.counters.bytes_published
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    assert rig.publisher.counters.bytes_published == sent


def test_a_broken_download_resumes_from_its_part_file_at_the_chunk_it_stopped_in(
    rig: Rig,
) -> None:
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    held = 2 * CHUNK + 500  # mid-chunk, as a request/response download may stop
    rig.parts.mkdir(parents=True)
    (rig.parts / f"{rig.sha}.b-1.tar.part").write_bytes(rig.bundle[:held])

    assert b"".join(rig.blobs.stream(rig.path, 1 << 30)) == rig.bundle
    assert rig.blobs.chunks_from_blobs == rig.chunks - 2  # chunks 0 and 1 were on disk
    assert rig.target_requests() == []


def test_a_chunk_the_broker_lacks_is_asked_for_by_request_and_the_rest_still_from_blobs(
    rig: Rig,
) -> None:
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    rig.cp.publish(topics.blob_chunk(rig.sha, 1), b"", retain=True, wait=TIMEOUT)  # lost

    assert b"".join(rig.blobs.stream(rig.path, 1 << 30)) == rig.bundle
    assert [(r.offset, r.length) for r in rig.target_requests()] == [(CHUNK, CHUNK)]
    assert (rig.blobs.chunks_from_blobs, rig.blobs.chunks_from_fallback) == (rig.chunks - 1, 1)


def test_an_unpublished_target_comes_whole_by_request(rig: Rig) -> None:
    assert b"".join(rig.blobs.stream(rig.path, 1 << 30)) == rig.bundle
    assert rig.blobs.chunks_from_blobs == 0
    assert sum(r.length for r in rig.target_requests()) >= len(rig.bundle)


def test_an_index_that_does_not_decode_is_refused_and_the_target_comes_by_request(
    rig: Rig,
) -> None:
    nested = b"[" * 100_000
    rig.cp.publish(topics.blob_index(rig.sha), nested, retain=True, wait=TIMEOUT)

    assert b"".join(rig.blobs.stream(rig.path, 1 << 30)) == rig.bundle
    assert rig.blobs.chunks_from_blobs == 0
    assert rig.sha not in rig.publisher.published()  # the control plane ignores it too
    rig.cp.publish(topics.blob_index(rig.sha), b"", retain=True, wait=TIMEOUT)


def test_tampered_blob_bytes_are_refused_by_tuf_and_never_resumed_from(rig: Rig) -> None:
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    rig.cp.publish(topics.blob_chunk(rig.sha, 2), os.urandom(CHUNK), retain=True, wait=TIMEOUT)

    with (
        pytest.raises(VerificationError) as caught,
        ProcessVerifier(rig.data_dir, rig.blobs).open("b-1.tar") as signed,
    ):
        signed.download()
    assert caught.value.error == "LengthOrHashMismatchError"
    assert not list(rig.parts.glob("*.part"))


def test_retention_clears_the_blobs_no_rollout_needs_from_the_broker(
    rig: Rig, shared_broker: MosquittoBroker
) -> None:
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    # The broker still holds earlier tests' targets: the publisher sees and clears them too.
    assert rig.sha not in rig.publisher.retain_only({rig.sha})
    assert rig.sha in rig.publisher.published()
    assert rig.publisher.retain_only(set()) == [rig.sha]
    assert rig.sha not in rig.publisher.published()

    # A new subscriber finds neither the index nor any chunk retained any more; the
    # marker published after the subscription proves the retained ones had their turn.
    inbox = Inbox()
    late = MqttLink(client_id="cp-late" + os.urandom(3).hex(), broker=shared_broker.address)
    late.subscribe(f"{topics.ROOT}/{topics.BROADCAST}/down/blobs/{rig.sha}/#", inbox)
    late.start()
    try:
        assert late.wait_subscribed(TIMEOUT)
        marker = topics.blob_index(rig.sha)
        rig.cp.publish(marker, b"marker", wait=TIMEOUT)
        inbox.wait_for_payload(marker, b"marker")
        assert [m for m in inbox.messages if m.payload != b"marker"] == []
    finally:
        late.stop()
    # The publisher's view follows the broker: a clear by another replica is seen too.
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    other = BlobPublisher(rig.cp, rig.repo.targets_dir, chunk_size=CHUNK)
    other._published = rig.publisher.published()
    other.retain_only(set())
    wait_until(lambda: rig.sha not in rig.publisher.published(), "the clear seen", timeout=TIMEOUT)
