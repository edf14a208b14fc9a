"""TUF metadata published once, retained, and read by devices without asking the control plane.

Against a real Mosquitto and a real signed repository: the control plane's
``MetadataPublisher`` publishes the current metadata, a device's ``BlobFetcher``
(which routes metadata through ``RetainedMetadata``) verifies and downloads a target
with TUF, and the request/response responder records every request it answers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.verification.tuf_client import TargetVerifier
from edgefleet.control_plane.broker.metadata import MetadataPublisher
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from tests.integration.agent.test_blobs import CHUNK, Rig
from tests.integration.agent.test_blobs import shared_broker as shared_broker
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(shared_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    device_id = "dev-meta" + os.urandom(4).hex()
    rig = Rig(shared_broker, tmp_path, device_id, 3 * CHUNK + 7)
    yield rig
    rig.stop()


def _publisher(rig: Rig) -> MetadataPublisher:
    # Attached after the link started: the subscription is made at once on a live link.
    publisher = MetadataPublisher(rig.cp, rig.repo.metadata_dir)
    publisher.attach()
    return publisher


def test_a_device_verifies_and_downloads_a_target_without_one_request_to_the_control_plane(
    rig: Rig,
) -> None:
    assert rig.publisher.ensure(rig.sha, "b-1.tar")
    metadata = _publisher(rig)
    assert metadata.ensure()

    verifier = TargetVerifier(rig.data_dir, rig.blobs)
    assert verifier.find("b-1.tar").length == len(rig.bundle)
    assert verifier.download().read_bytes() == rig.bundle
    assert rig.asked == []  # neither metadata nor target bytes by request
    # timestamp, snapshot and targets from the broker; the next-root probe answered 404
    assert rig.blobs.metadata.files_retained == 3
    assert rig.blobs.metadata.files_fallback == 0
    # Published once: the next offer's ensure sends nothing.
    sent = metadata.counters.bytes_published
    assert metadata.ensure()
    assert metadata.counters.bytes_published == sent


def test_a_new_signing_is_republished_and_the_replaced_files_are_cleared(rig: Rig) -> None:
    metadata = _publisher(rig)
    assert metadata.ensure()
    first = metadata.published()
    assert first is not None
    rig.repo.add_target("b-2.tar", b"second bundle", {"release": 2})
    assert metadata.ensure()
    second = metadata.published()
    assert second is not None and second.files != first.files
    assert metadata.counters.files_cleared == 2  # the old snapshot and targets
    assert second.files.keys() & first.files.keys() >= {"1.root.json", "timestamp.json"}

    verifier = TargetVerifier(rig.data_dir, rig.blobs)
    assert verifier.find("b-2.tar").length == len(b"second bundle")
    assert not [r for r in rig.asked if r.path.startswith("metadata/")]


def test_without_published_metadata_the_device_asks_the_control_plane_as_before(
    rig: Rig,
) -> None:
    metadata = _publisher(rig)
    assert metadata.ensure()
    # The broker loses its retained index: devices must still get every file.
    rig.cp.publish("fleet/all/down/meta/index", b"", qos=1, retain=True, wait=10)
    wait_until(lambda: metadata.published() is None, what="the index cleared", timeout=10)

    verifier = TargetVerifier(rig.data_dir, rig.blobs)
    assert verifier.find("b-1.tar").length == len(rig.bundle)
    asked = {r.path for r in rig.asked}
    assert "metadata/timestamp.json" in asked
    assert rig.blobs.metadata.files_retained == 0


def test_a_rotated_timestamp_key_reaches_a_device_through_the_retained_root_chain(
    rig: Rig,
) -> None:
    metadata = _publisher(rig)
    assert metadata.ensure()
    verifier = TargetVerifier(rig.data_dir, rig.blobs)
    assert verifier.find("b-1.tar").length == len(rig.bundle)  # the device read the index
    rig.repo.rotate_key("timestamp")  # a new root version, and a timestamp the old one refuses
    assert metadata.ensure()
    published = metadata.published()
    assert published is not None and published.root_version == 2

    # Within the index's 30 s: the root probe reads the index afresh and finds 2.root.json.
    assert verifier.find("b-1.tar").length == len(rig.bundle)
    assert not [r for r in rig.asked if r.path.startswith("metadata/")]
    trusted = rig.data_dir / "tuf" / "metadata" / "root.json"
    assert b'"version": 2' in trusted.read_bytes() or b'"version":2' in trusted.read_bytes()


def test_a_replica_with_older_repository_files_does_not_publish_over_newer_metadata(
    rig: Rig, tmp_path: Path
) -> None:
    metadata = _publisher(rig)
    stale = tmp_path / "stale-metadata"
    shutil.copytree(rig.repo.metadata_dir, stale)  # this replica's files stop here
    rig.repo.add_target("b-3.tar", b"third bundle", {"release": 3})
    assert metadata.ensure()
    newer = metadata.published()
    assert newer is not None and newer.timestamp_version >= 2

    lagging = MetadataPublisher(rig.cp, stale)
    lagging.attach()
    wait_until(lambda: lagging.published() == newer, what="the lagging replica sees the index")
    assert lagging.ensure()
    assert lagging.counters.publishes == 0
    assert metadata.published() == newer
