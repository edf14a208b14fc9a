"""The control plane publishes a rollout's target once as retained blobs, and clears them
when no running rollout needs them, against a real Mosquitto.

The rollout devices (``tests.support.rollout_fleet``) speak the wire contract and
never fetch: what is asserted is what the broker holds, as a fresh subscriber sees it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet import topics
from edgefleet.control_plane.broker.link import FleetLink
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.messages import BlobIndex, decode_as
from edgefleet.mqtt import MqttLink
from tests.support.harness import Inbox
from tests.support.polling import wait_until
from tests.support.rollout_fleet import NEW, Rig

pytestmark = pytest.mark.integration

SHA = "0" * 64  # the sha256 ``rollout_fleet.add_bundle`` gives its bundle rows
TIMEOUT = 20.0


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    instance = Rig(tmp_path, broker)
    instance.start_control_plane()
    try:
        yield instance
    finally:
        for device in instance.devices:
            device.stop()
        instance.stop_control_plane()


def _retained(broker: MosquittoBroker) -> dict[str, bytes]:
    """The retained blob messages of ``SHA`` the broker hands a new subscriber."""
    inbox = Inbox()
    link = MqttLink(client_id="cp-look" + os.urandom(3).hex(), broker=broker.address)
    link.subscribe(f"{topics.ROOT}/{topics.BROADCAST}/down/blobs/{SHA}/#", inbox)
    link.start()
    try:
        assert link.wait_subscribed(TIMEOUT)
        marker = f"{topics.ROOT}/{topics.BROADCAST}/down/blobs/{SHA}/marker"
        link.publish(marker, b"marker", wait=TIMEOUT)
        inbox.wait_for_payload(marker, b"marker")  # retained ones arrive before it
        return {m.topic.rsplit("/", 1)[1]: m.payload for m in inbox.messages if m.topic != marker}
    finally:
        link.stop()


def test_a_rollout_publishes_its_target_once_and_retention_clears_it_after(
    rig: Rig, broker: MosquittoBroker
) -> None:
    rig.fleet(3)
    link: FleetLink = rig.api.app.state.link  # type: ignore[union-attr]
    bundle = os.urandom(300_000)
    targets = rig.api.app.state.repository.targets_dir  # type: ignore[union-attr]
    targets.mkdir(parents=True, exist_ok=True)
    (targets / f"{SHA}.{NEW}.tar").write_bytes(bundle)

    rollout = rig.create(waves=[1, "100%"])
    rig.ended(rollout["id"])
    # Three offers, one publication: the bundle's bytes and an index, once.
    assert link.delivery_bytes()["blobs"] < len(bundle) + 1000
    held = _retained(broker)
    index = decode_as(held.pop("index"), BlobIndex)
    assert (index.size, index.chunks) == (len(bundle), 3)
    assert b"".join(held[str(n)] for n in range(index.chunks)) == bundle

    assert link.sweep_blobs() == [SHA]  # the rollout is complete: nothing needs it
    assert _retained(broker) == {}
    wait_until(lambda: SHA not in link.blobs.published(), "the clear seen", timeout=TIMEOUT)  # type: ignore[union-attr]
