"""End-to-end receipts: the control plane names back every event id it has committed.

A device-side MQTT client publishes telemetry and install reports to a real control
plane through a real Mosquitto and listens on its ``down/receipt`` topic.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.messages import RECEIPT_MAX_IDS, InstallReport, Receipt, TelemetryEvent, decode_as
from edgefleet.mqtt import MqttLink
from tests.support.control_plane import ControlPlane
from tests.support.harness import Inbox
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DEVICE = "dev-receipts01"
OTHER = "dev-receipts02"


@pytest.fixture
def api(control_plane: ControlPlane) -> TestClient:
    return control_plane()


class Device:
    """A device's MQTT client that keeps every receipt addressed to it."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.id = device_id
        self.inbox = Inbox()
        self.link = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
        self.link.subscribe(topics.down(device_id, topics.Down.RECEIPT), self.inbox)
        self.link.start()
        assert self.link.wait_subscribed(10)

    def receipts(self) -> list[Receipt]:
        payloads = self.inbox.on(topics.down(self.id, topics.Down.RECEIPT))
        return [decode_as(p, Receipt) for p in payloads]

    def receipted(self) -> set[str]:
        return {event_id for r in self.receipts() for event_id in r.event_ids}


def stored_ids(api: TestClient, device_id: str) -> set[str]:
    events = api.get("/api/v1/events", params={"device_id": device_id, "limit": 5000}).json()
    return {e["event_id"] for e in events}


def test_device_gets_receipts_naming_exactly_its_stored_telemetry_and_reports(
    api: TestClient, broker: MosquittoBroker
) -> None:
    device, other = Device(broker, DEVICE), Device(broker, OTHER)
    try:
        events = [TelemetryEvent(kind="inference", data={"count": i}) for i in range(5)]
        telemetry = topics.up(DEVICE, topics.Up.TELEMETRY)
        for event in events:
            device.link.publish(telemetry, event.to_bytes(), wait=10)
        ids = {e.event_id for e in events}
        wait_until(lambda: device.receipted() == ids, "receipts for the telemetry")
        # Named only once committed: every receipted id is in the database already.
        assert stored_ids(api, DEVICE) == ids

        # A resend of what is already stored (a lost receipt) is receipted again.
        device.inbox.messages.clear()
        device.link.publish(telemetry, events[0].to_bytes(), wait=10)
        wait_until(lambda: device.receipted() == {events[0].event_id}, "a receipt for the resend")

        # An install report matching no rollout is handled (ignored) and receipted, and
        # so is the same report sent again.
        device.inbox.messages.clear()
        report = InstallReport(bundle_id="digits-9-none", state="active")
        for _ in range(2):
            device.link.publish(topics.up(DEVICE, topics.Up.REPORT), report.to_bytes(), wait=10)
        wait_until(lambda: len(device.receipts()) == 2, "two receipts for the report")
        assert [r.event_ids for r in device.receipts()] == [[report.event_id]] * 2

        # Receipts go to the device that sent the events, and to no other.
        assert other.receipts() == []
    finally:
        device.link.stop()
        other.link.stop()


def test_a_burst_larger_than_one_receipt_is_receipted_in_chunks(
    api: TestClient, broker: MosquittoBroker
) -> None:
    device = Device(broker, DEVICE)
    try:
        events = [TelemetryEvent(kind="resource", data={"n": i}) for i in range(1_200)]
        topic = topics.up(DEVICE, topics.Up.TELEMETRY)
        for event in events:
            device.link.publish(topic, event.to_bytes(), qos=1)
        ids = {e.event_id for e in events}
        wait_until(lambda: device.receipted() == ids, "receipts for all 1,200 events")
        assert all(len(r.event_ids) <= RECEIPT_MAX_IDS for r in device.receipts())
        assert sum(len(r.event_ids) for r in device.receipts()) == len(ids)
        assert stored_ids(api, DEVICE) == ids
    finally:
        device.link.stop()


def test_no_receipt_while_the_database_cannot_store_and_one_for_the_resend(
    tmp_path: Path, api: TestClient, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(broker, DEVICE)
    database = sqlite3.connect(tmp_path / "cp" / "control-plane.db", isolation_level=None)
    try:
        caplog.set_level(logging.WARNING, logger="edgefleet.control_plane.broker.link")
        # The database, not the message, is at fault: a table gone from under the control plane.
        database.execute("ALTER TABLE event RENAME TO event_away")
        event = TelemetryEvent(kind="inference", data={"count": 3})
        topic = topics.up(DEVICE, topics.Up.TELEMETRY)
        device.link.publish(topic, event.to_bytes(), wait=10)
        wait_until(lambda: "telemetry not stored" in caplog.text, "the failed store")
        database.execute("ALTER TABLE event_away RENAME TO event")

        # The device resends what no receipt named; now it is stored and receipted, once.
        device.link.publish(topic, event.to_bytes(), wait=10)
        wait_until(lambda: device.receipted() == {event.event_id}, "a receipt for the resend")
        assert [r.event_ids for r in device.receipts()] == [[event.event_id]]
        assert stored_ids(api, DEVICE) == {event.event_id}
        assert api.get(f"/api/v1/devices/{DEVICE}").status_code == 404  # no status, no row
        assert "edgefleet_messages_rejected_total{" not in api.get("/metrics").text
    finally:
        database.close()
        device.link.stop()
