"""The control plane's part in end-to-end receipts, played by a small real MQTT client
for agent tests that need no real control plane: it subscribes to every device's
``up/telemetry`` and ``up/report``, remembers each message by event id (counting
copies), and, while ``receipting`` is on, answers each with a ``Receipt`` on the
device's ``down/receipt``."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import msgspec

from edgefleet import topics
from edgefleet.messages import InstallReport, Receipt, TelemetryEvent, decode_message
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink


class ReceiptingPlane:
    """Stores up/telemetry and up/report by event id and receipts them per device."""

    def __init__(self, broker: BrokerAddress, *, client_id: str = "cp-receipting") -> None:
        self.receipting = True
        self.telemetry: dict[str, TelemetryEvent] = {}
        self.reports: dict[str, InstallReport] = {}
        self.statuses: list[dict[str, Any]] = []
        self.copies: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.link = MqttLink(client_id=client_id, broker=broker, clean_start=True)
        self.link.subscribe(topics.up_filter(topics.Up.TELEMETRY), self._on_message)
        self.link.subscribe(topics.up_filter(topics.Up.REPORT), self._on_message)
        self.link.subscribe(topics.up_filter(topics.Up.STATUS), self._on_status)

    def start(self, timeout: float = 10.0) -> ReceiptingPlane:
        self.link.start()
        assert self.link.wait_subscribed(timeout), "the receipting plane never subscribed"
        return self

    def stop(self) -> None:
        self.link.stop()

    def events(self, kind: str) -> list[TelemetryEvent]:
        with self._lock:
            return [e for e in self.telemetry.values() if e.kind == kind]

    def _on_message(self, incoming: Incoming) -> None:
        device_id, _channel = topics.parse_up(incoming.topic)
        message = decode_message(incoming.payload, topic=incoming.topic)
        if not isinstance(message, TelemetryEvent | InstallReport):
            return
        with self._lock:
            self.copies[message.event_id] += 1
            if isinstance(message, TelemetryEvent):
                self.telemetry[message.event_id] = message
            else:
                self.reports[message.event_id] = message
            receipting = self.receipting
        if receipting:  # the real one receipts after its commit, per burst
            self.link.publish(
                topics.down(device_id, topics.Down.RECEIPT),
                Receipt(event_ids=[message.event_id]).to_bytes(),
                qos=1,
            )

    def _on_status(self, incoming: Incoming) -> None:
        if incoming.payload:
            with self._lock:
                self.statuses.append(msgspec.json.decode(incoming.payload))
