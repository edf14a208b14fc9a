"""The ingest worker process on PostgreSQL: started with the control plane, restarted
after ``kill -9`` and shown in health while it recovers, and every event stored exactly
once across the restart (devices resend what no receipt named, as their spools do)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest
from sqlalchemy import text

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.messages import Receipt, TelemetryEvent, decode_as
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink
from tests.support.control_plane import ControlPlane
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DEVICES = [f"dev-ingestw{n:04d}" for n in range(3)]


class SpoolingDevices:
    """Devices that keep each event until a receipt names it, and resend the rest."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._lock = threading.Lock()
        self.pending: dict[str, tuple[str, bytes]] = {}
        self.sent: dict[str, tuple[str, bytes]] = {}
        self.receipted: set[str] = set()
        self.receipted_ids = 0  # ids named by receipts, repeats included
        self.link = MqttLink(
            client_id="dev-ingestw-sim", broker=BrokerAddress.parse(broker.url), clean_start=True
        )
        for device in DEVICES:
            self.link.subscribe(topics.down(device, topics.Down.RECEIPT), self._on_receipt)

    def __enter__(self) -> SpoolingDevices:
        self.link.start()
        assert self.link.wait_subscribed(10), "devices not subscribed"
        return self

    def __exit__(self, *_exc: object) -> None:
        self.link.stop()

    def send(self, count: int) -> list[str]:
        ids = []
        for n in range(count):
            device = DEVICES[n % len(DEVICES)]
            event = TelemetryEvent(kind="inference", data={"count": 1, "window_s": 10})
            topic = topics.up(device, topics.Up.TELEMETRY)
            with self._lock:
                self.pending[event.event_id] = self.sent[event.event_id] = (topic, event.to_bytes())
            self.link.publish(topic, event.to_bytes(), qos=1)
            ids.append(event.event_id)
        return ids

    def resend(self) -> None:
        with self._lock:
            waiting = list(self.pending.values())
        for topic, payload in waiting:
            self.link.publish(topic, payload, qos=1)

    def resend_all(self) -> int:
        """Send every event again, receipted or not; how many."""
        with self._lock:
            everything = list(self.sent.values())
        for topic, payload in everything:
            self.link.publish(topic, payload, qos=1)
        return len(everything)

    def all_receipted(self) -> bool:
        with self._lock:
            return not self.pending

    def _on_receipt(self, message: Incoming) -> None:
        receipt = decode_as(message.payload, Receipt, topic=message.topic)
        with self._lock:
            self.receipted_ids += len(receipt.event_ids)
            for event_id in receipt.event_ids:
                self.pending.pop(event_id, None)
                self.receipted.add(event_id)


def stored(client: Any) -> tuple[int, int]:
    """(rows, distinct event ids) in the events table."""
    with client.app.state.engine.connect() as db:
        rows, distinct = db.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM event")
        ).one()
    return int(rows), int(distinct)


def test_ingest_worker_restarts_after_kill_9_and_stores_every_event_once(
    pg_url: str, broker: MosquittoBroker, control_plane: ControlPlane
) -> None:
    # pg_url first: its database is dropped only after the control plane has stopped.
    client = control_plane(
        database_url=pg_url, mqtt_shared_group="cp-ingest-test", ingest_processes=1
    )
    link = client.app.state.link  # type: ignore[attr-defined]
    assert link.telemetry is None, "on PostgreSQL ingest leaves the API's process"
    [process] = link.ingest_processes
    first_pid = process.pid
    assert first_pid is not None and first_pid != os.getpid()
    wait_until(
        lambda: any(w.name.endswith("/cp-telemetry") and w.running for w in link.workers()),
        "the worker's own cp-telemetry reported",
        timeout=30,
    )
    with SpoolingDevices(broker) as devices:

        def resent_until_receipted() -> bool:
            if devices.all_receipted():
                return True
            devices.resend()  # a spool resends what no receipt named
            return False

        devices.send(300)
        wait_until(resent_until_receipted, "the first events receipted", timeout=60)
        assert stored(client) == (300, 300)

        # Killed while a second batch is on its way: what it held is not receipted.
        devices.send(300)
        os.kill(first_pid, signal.SIGKILL)

        def degraded() -> dict[str, Any] | None:
            health = client.get("/api/v1/health").json()
            ingest = [w for w in health["workers"] if w["name"] == "cp-ingest-0"]
            return health if health["status"] == "degraded" and ingest else None

        health = wait_until(degraded, "health showing the ingest process's death", timeout=30)
        [death] = [w for w in health["workers"] if w["name"] == "cp-ingest-0"]
        assert death["restarts"] >= 1 and "-9" in death["last_error"]
        wait_until(
            lambda: process.pid not in (None, first_pid) and process.subscribed.is_set(),
            "a new ingest process subscribed",
            timeout=60,
        )
        wait_until(resent_until_receipted, "every event receipted after the restart", timeout=90)
        # Everything once more, receipted or not (a broker's redelivery): nothing new.
        before = devices.receipted_ids
        again = devices.resend_all()
        wait_until(
            lambda: devices.receipted_ids >= before + again, "the repeats receipted", timeout=60
        )
    assert stored(client) == (600, 600)
    assert len(devices.receipted) == 600
