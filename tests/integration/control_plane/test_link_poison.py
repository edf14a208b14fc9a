"""Poison messages on every up topic are refused one by one; the pipelines carry on.

A real control plane (FleetLink, SQLite) and real Mosquitto; the poison comes from a
device's own MQTT client on its own topics, as the broker ACLs would allow.
"""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.messages import DeviceStatus, Receipt, TelemetryEvent, decode_as
from edgefleet.mqtt import MqttLink
from tests.support.control_plane import ControlPlane
from tests.support.harness import Inbox
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

POISONER = "dev-poison0001"
HEALTHY = "dev-healthy001"
HUGE = b"[" * 900_000  # the payload that killed the telemetry thread (issue 13)
DEEP = b"[" * 5_000 + b"]" * 5_000  # small, but nested past any sane limit


@pytest.fixture
def api(control_plane: ControlPlane) -> TestClient:
    return control_plane()


def device_link(broker: MosquittoBroker, device_id: str) -> MqttLink:
    link = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
    link.start()
    assert link.wait_connected(10)
    return link


def rejected_metric(api: TestClient, channel: str, reason: str) -> float:
    text = api.get("/metrics").text
    match = re.search(
        rf'^edgefleet_messages_rejected_total{{channel="{channel}",reason="{reason}"}} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(match.group(1)) if match else 0.0


def stored(api: TestClient, device_id: str) -> int:
    return int(api.get("/api/v1/events/count", params={"device_id": device_id}).json()["count"])


def test_poison_on_every_up_topic_is_refused_and_counted_and_ingest_carries_on(
    api: TestClient, broker: MosquittoBroker
) -> None:
    poisoner = device_link(broker, POISONER)
    healthy = device_link(broker, HEALTHY)
    try:
        poisoner.publish(
            topics.up(POISONER, topics.Up.STATUS), DeviceStatus(online=True).to_bytes(), wait=10
        )
        wait_until(lambda: api.get(f"/api/v1/devices/{POISONER}").status_code == 200, "device")
        for channel in topics.Up:
            topic = topics.up(POISONER, channel)
            for payload in (HUGE, DEEP):
                # A fetch request needs correlation data to reach the handler at all.
                poisoner.publish(topic, payload, wait=10, correlation=uuid.uuid4().bytes)

        event = TelemetryEvent(kind="inference", data={"count": 1, "errors": 0})
        healthy.publish(topics.up(HEALTHY, topics.Up.TELEMETRY), event.to_bytes(), wait=10)
        wait_until(lambda: stored(api, HEALTHY) == 1, "the healthy device's event stored")

        def all_counted() -> dict[str, object] | None:
            device = api.get(f"/api/v1/devices/{POISONER}").json()
            return device if device["rejected_messages"] == 2 * len(topics.Up) else None

        device = wait_until(all_counted, "two refused messages per channel counted")
        assert sorted((r["channel"], r["reason"], r["count"]) for r in device["rejections"]) == [
            (channel.value, reason, 1)
            for channel in sorted(topics.Up, key=lambda c: c.value)
            for reason in ("too_deep", "too_large")
        ]
        for channel in topics.Up:
            assert rejected_metric(api, channel.value, "too_large") == 1.0
            assert rejected_metric(api, channel.value, "too_deep") == 1.0
        assert stored(api, POISONER) == 0
        assert api.get("/api/v1/health").json()["status"] == "ok"

        # Still alive afterwards: the poisoner's own good telemetry is stored too.
        event = TelemetryEvent(kind="inference", data={"count": 2, "errors": 0})
        poisoner.publish(topics.up(POISONER, topics.Up.TELEMETRY), event.to_bytes(), wait=10)
        wait_until(lambda: stored(api, POISONER) == 1, "the poisoner's good event stored")
    finally:
        poisoner.stop()
        healthy.stop()


def test_an_event_the_database_cannot_take_costs_only_itself_within_its_burst(
    api: TestClient, broker: MosquittoBroker
) -> None:
    device = device_link(broker, POISONER)
    receipts = Inbox()
    device.subscribe(topics.down(POISONER, topics.Down.RECEIPT), receipts)
    assert device.wait_subscribed(10)
    try:
        good = [TelemetryEvent(kind="inference", data={"count": i}) for i in range(20)]
        # Decodes fine, but its timestamp is beyond any datetime: storing it raises.
        bad = TelemetryEvent(kind="error", ts=1e300, data={"reason": "clock"})
        burst = [*good[:10], bad, *good[10:]]
        topic = topics.up(POISONER, topics.Up.TELEMETRY)
        for event in burst:
            device.publish(topic, event.to_bytes(), qos=1)
        wait_until(lambda: stored(api, POISONER) == 20, "every good event of the burst stored")
        wait_until(
            lambda: rejected_metric(api, "telemetry", "failed") == 1.0, "the bad one counted"
        )

        def receipted() -> set[str]:
            return {
                event_id
                for payload in receipts.on(topics.down(POISONER, topics.Down.RECEIPT))
                for event_id in decode_as(payload, Receipt).event_ids
            }

        # The bad event is receipted as handled too: resending it could never succeed.
        wait_until(lambda: receipted() == {e.event_id for e in burst}, "receipts for the burst")
        assert api.get("/api/v1/health").json()["status"] == "ok"
    finally:
        device.stop()
