"""Telemetry reaches the control plane's events table once per event id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import MqttLink
from tests.support.control_plane import serve
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration
DEVICE = "dev-telemetry01"


def wait_for_count(api: TestClient, expected: int, **params: str) -> int:
    def count() -> int:
        return int(api.get("/api/v1/events/count", params=params).json()["count"])

    wait_until(lambda: count() >= expected, f"{expected} events {params}", timeout=20)
    # Let any stray extra message land before the caller compares.
    time.sleep(0.3)
    return count()


def test_redelivered_events_are_stored_once_and_attributed_to_the_topic_device(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with serve(Settings(data_dir=tmp_path / "cp", broker_url=broker.url)) as api:
        device = MqttLink(client_id=DEVICE, broker=broker.address, clean_start=True)
        device.start()
        assert device.wait_connected(10)
        events = [
            TelemetryEvent(kind="inference", data={"count": i, "errors": 0}) for i in range(20)
        ]
        topic = topics.up(DEVICE, topics.Up.TELEMETRY)
        for event in events + events[:5]:  # five redeliveries
            device.publish(topic, event.to_bytes(), wait=10)
        # A payload naming another device is still filed under the topic's device.
        spoof = TelemetryEvent(kind="error", data={"device_id": "dev-someoneelse"})
        device.publish(topic, spoof.to_bytes(), wait=10)
        device.publish(topic, b"{broken", wait=10)
        device.stop()

        assert wait_for_count(api, 21) == 21
        assert wait_for_count(api, 20, kind="inference") == 20
        stored = api.get("/api/v1/events", params={"kind": "error"}).json()
        assert [e["device_id"] for e in stored] == [DEVICE]
        assert api.get("/api/v1/events/count", params={"device_id": "dev-someoneelse"}).json() == {
            "count": 0
        }
