"""Attacks by one enrolled device on another, against Mosquitto running exactly the
configuration the control plane generates (``MosquittoBroker(security=...)``).

Every device here is enrolled through the real API and connects with the password it
was given. Negative outcomes are asserted by delivery: each attack is followed by a
marker sent after it on the same path, and once the marker has arrived, anything the
attack had let through would have arrived before it.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MAX_PACKET_SIZE, MosquittoBroker
from edgefleet.control_plane.broker.security import (
    BrokerAuthFiles,
    add_control_user,
    read_devices,
    write_auth_files,
)
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import BrokerAddress, MqttLink
from tests.support.harness import Inbox
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

ALICE = "dev-alice0001"
BOB = "dev-bob000001"
CONTROL_USER = "cp-controlplane"
OBSERVER_USER = "cp-observer01"
PROBE_DEVICE = "dev-probe00001"
PROBE_TOPIC = "fleet/dev-nobody0001/up/probe"
TIMEOUT = 20.0


@dataclass
class SecureFleet:
    broker: MosquittoBroker
    files: BrokerAuthFiles
    app: FastAPI
    api: TestClient
    observer_password: str
    links: list[MqttLink] = field(default_factory=list)

    def enrol(self, device_id: str) -> str:
        token = self.api.post("/api/v1/enrolment/tokens", json={}).json()["token"]
        response = self.api.post(
            "/api/v1/enrol", json={"token": token, "device_id": device_id, "profile": "p"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["username"] == device_id
        return str(response.json()["password"])

    def link(
        self, client_id: str, username: str | None, password: str | None, **kwargs: Any
    ) -> MqttLink:
        link = MqttLink(
            client_id=client_id,
            broker=self.broker.address,
            clean_start=True,
            username=username,
            password=password,
            **kwargs,
        )
        self.links.append(link)
        return link

    def connected(self, device_id: str, password: str, **kwargs: Any) -> MqttLink:
        link = self.link(device_id, device_id, password, **kwargs)
        link.start()
        assert link.wait_connected(TIMEOUT), f"{device_id} could not connect"
        return link

    def observer(self, topic_filter: str = "fleet/+/up/#") -> Inbox:
        """A second control-plane client that sees every message on ``topic_filter``.

        Returns once its subscription is live: the broker handles one client's packets
        in order, so its own probe coming back means the SUBSCRIBE before it was applied.
        """
        inbox = Inbox()
        link = self.link(OBSERVER_USER, OBSERVER_USER, self.observer_password)
        link.subscribe(topic_filter, inbox)
        link.start()
        assert link.wait_connected(TIMEOUT)
        link.publish(PROBE_TOPIC, b"observer ready")
        inbox.wait_for_payload(PROBE_TOPIC, b"observer ready")
        return inbox

    def ready(self, link: MqttLink, device_id: str, watcher: Inbox) -> None:
        """Wait until ``link``'s subscriptions are live: its later publish was seen."""
        assert link.wait_connected(TIMEOUT), f"{device_id} could not connect"
        token = f"ready {time.monotonic_ns()}".encode()
        link.publish(topics.up(device_id, topics.Up.STATUS), token)
        watcher.wait_for_payload(topics.up(device_id, topics.Up.STATUS), token)

    def control_plane_ready(self) -> None:
        """Retry a probe device's event until the control plane's subscriptions are live."""
        probe = self.connected(PROBE_DEVICE, self.enrol(PROBE_DEVICE))
        topic = topics.up(PROBE_DEVICE, topics.Up.TELEMETRY)

        def stored() -> bool:
            probe.publish(topic, TelemetryEvent(kind="inference", data={}).to_bytes())
            return self.event_count(PROBE_DEVICE) > 0

        wait_until(stored, "the control plane to ingest telemetry")
        probe.stop()

    def event_count(self, device_id: str) -> int:
        response = self.api.get("/api/v1/events/count", params={"device_id": device_id})
        return int(response.json()["count"])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SecureFleet]:
    files = BrokerAuthFiles(tmp_path / "broker" / "auth")
    control_password = add_control_user(files, CONTROL_USER)
    observer_password = add_control_user(files, OBSERVER_USER)
    write_auth_files(files, devices={})
    broker = MosquittoBroker(tmp_path / "broker", security=files)
    broker.start()
    settings = Settings(
        data_dir=tmp_path / "cp",
        broker_url=f"mqtt://{CONTROL_USER}:{control_password}@127.0.0.1:{broker.port}",
        client_id=CONTROL_USER,
        broker_auth_dir=files.directory,
        enrol_burst=50,
    )
    app = create_app(settings)
    secure = None
    try:
        with TestClient(app) as api:
            assert app.state.link._link.wait_subscribed(TIMEOUT), "control plane not connected"
            secure = SecureFleet(broker, files, app, api, observer_password)
            yield secure
    finally:
        for link in secure.links if secure else []:
            link.stop()
        broker.kill()


def mosquitto_pub(broker: MosquittoBroker, username: str | None, password: str | None, topic: str):
    """One publish by Mosquitto's own client: its exit status says whether it got in."""
    binary = shutil.which("mosquitto_pub")
    if binary is None:
        pytest.skip("mosquitto_pub (mosquitto-clients) is not installed")
    command = [binary, "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5"]
    command += ["-t", topic, "-m", "probe", "-q", "1"]
    if username is not None:
        command += ["-u", username, "-P", password or ""]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


class RawMqttClient:
    """A client that ignores every limit the broker announces, as an attacker's would.

    MQTT 3.1.1 over a plain socket: CONNECT with a username and password, then any
    PUBLISH, whatever its size.
    """

    def __init__(self, address: BrokerAddress, client_id: str, username: str, password: str):
        self.sock = socket.create_connection((address.host, address.port), timeout=TIMEOUT)
        self._reset = False
        body = _string(b"MQTT") + bytes([4, 0b1100_0010]) + struct.pack("!H", 30)
        body += _string(client_id.encode()) + _string(username.encode())
        body += _string(password.encode())
        self.sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
        connack = self._read_exact(4)
        assert connack[0] == 0x20 and connack[3] == 0, f"connect refused: {connack!r}"

    def publish(self, topic: str, payload: bytes) -> None:
        """Send a QoS 0 PUBLISH; a broker that hangs up half-way shows in ``closed_by_broker``."""
        body = _string(topic.encode()) + payload
        try:
            self.sock.sendall(bytes([0x30]) + _remaining_length(len(body)) + body)
        except (BrokenPipeError, ConnectionResetError):
            self._reset = True

    def closed_by_broker(self) -> bool:
        """True once the broker has closed the connection (bounded by the socket timeout)."""
        if self._reset:
            return True
        try:
            while chunk := self.sock.recv(4096):
                del chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


# -- the attacks ----------------------------------------------------------------


def test_device_cannot_publish_on_another_devices_up_topics(fleet: SecureFleet) -> None:
    alice_pw, bob_pw = fleet.enrol(ALICE), fleet.enrol(BOB)
    fleet.control_plane_ready()
    watcher = fleet.observer()
    fleet.connected(ALICE, alice_pw)
    bob = fleet.connected(BOB, bob_pw)

    # No waiting on the acknowledgements: Mosquitto 2.0.11 answers a denied QoS 1 publish
    # with PUBACK 135 and at times also drops the connection; paho resends after reconnect.
    forged = TelemetryEvent(kind="error", data={"forged": True})
    for channel in (topics.Up.TELEMETRY, topics.Up.STATUS, topics.Up.REPORT, topics.Up.FETCH):
        bob.publish(topics.up(ALICE, channel), forged.to_bytes())
    marker = TelemetryEvent(kind="inference", data={"marker": True})
    bob.publish(topics.up(BOB, topics.Up.TELEMETRY), marker.to_bytes())

    watcher.wait_for_payload(topics.up(BOB, topics.Up.TELEMETRY), marker.to_bytes())
    assert not [m for m in watcher.messages if m.topic.startswith(f"fleet/{ALICE}/")]
    # The control plane files events in arrival order: Bob's marker is in, Alice has none.
    wait_until(lambda: fleet.event_count(BOB) == 1, "bob's marker event stored")
    assert fleet.event_count(ALICE) == 0


def test_device_cannot_read_another_devices_down_topics(fleet: SecureFleet) -> None:
    alice_pw, bob_pw = fleet.enrol(ALICE), fleet.enrol(BOB)
    alice_inbox, bob_inbox = Inbox(), Inbox()
    alice = fleet.link(ALICE, ALICE, alice_pw)
    alice.subscribe(topics.device_down_filter(ALICE), alice_inbox)
    bob = fleet.link(BOB, BOB, bob_pw)
    # His own filter, and every filter that would take in Alice's (refused at SUBSCRIBE).
    own_and_wider = (topics.device_down_filter(BOB), topics.device_down_filter(ALICE))
    for topic_filter in (*own_and_wider, "fleet/+/down/#", "fleet/#", "#"):
        bob.subscribe(topic_filter, bob_inbox)
    watcher = fleet.observer()
    alice.start()
    bob.start()
    fleet.ready(alice, ALICE, watcher)
    fleet.ready(bob, BOB, watcher)
    control = fleet.app.state.link._link

    secret = b"for alice only"
    control.publish(topics.down(ALICE, topics.Down.COMMAND), secret, wait=TIMEOUT)
    marker = b"for bob"
    control.publish(topics.down(BOB, topics.Down.COMMAND), marker, wait=TIMEOUT)

    alice_inbox.wait_for_payload(topics.down(ALICE, topics.Down.COMMAND), secret)
    bob_inbox.wait_for_payload(topics.down(BOB, topics.Down.COMMAND), marker)
    assert all(not m.topic.startswith(f"fleet/{ALICE}/") for m in bob_inbox.messages)
    assert all(m.payload != secret for m in bob_inbox.messages)


def test_device_cannot_take_over_another_devices_client_id(fleet: SecureFleet) -> None:
    alice_pw, bob_pw = fleet.enrol(ALICE), fleet.enrol(BOB)
    alice_inbox = Inbox()
    # A long reconnect delay: if Bob kicked Alice off, she would stay off for this test.
    alice = fleet.link(ALICE, ALICE, alice_pw, reconnect_min_delay=60, reconnect_max_delay=60)
    alice.subscribe(topics.device_down_filter(ALICE), alice_inbox)
    alice_connects: list[int] = []
    alice.on_connect(lambda: alice_connects.append(1))
    watcher = fleet.observer()
    alice.start()
    fleet.ready(alice, ALICE, watcher)

    # Bob, with his own credentials, asks for Alice's client id.
    impostor = fleet.link(ALICE, BOB, bob_pw)
    impostor.start()
    fleet.ready(impostor, BOB, watcher)
    # The broker renamed him to his username: what he sends is Bob's, never Alice's.
    impostor.publish(topics.up(ALICE, topics.Up.TELEMETRY), b"as alice")
    impostor.publish(topics.up(BOB, topics.Up.TELEMETRY), b"as bob")
    watcher.wait_for_payload(topics.up(BOB, topics.Up.TELEMETRY), b"as bob")
    assert watcher.on(topics.up(ALICE, topics.Up.TELEMETRY)) == []

    # Alice's session was never taken over: still connected once, still receiving.
    control = fleet.app.state.link._link
    control.publish(topics.down(ALICE, topics.Down.COMMAND), b"still yours", wait=TIMEOUT)
    alice_inbox.wait_for_payload(topics.down(ALICE, topics.Down.COMMAND), b"still yours")
    assert alice.connected and len(alice_connects) == 1

    # Bob cannot log in as Alice either: her username needs her password.
    refused = mosquitto_pub(fleet.broker, ALICE, bob_pw, topics.up(ALICE, topics.Up.TELEMETRY))
    assert refused.returncode != 0 and "not authori" in refused.stderr.lower()


def test_anonymous_and_unenrolled_clients_are_refused(fleet: SecureFleet) -> None:
    topic = topics.up(ALICE, topics.Up.TELEMETRY)
    anonymous = mosquitto_pub(fleet.broker, None, None, topic)
    assert anonymous.returncode != 0 and "not authori" in anonymous.stderr.lower()
    stranger = mosquitto_pub(fleet.broker, ALICE, "guessed", topic)
    assert stranger.returncode != 0 and "not authori" in stranger.stderr.lower()
    accepted = mosquitto_pub(fleet.broker, ALICE, fleet.enrol(ALICE), topic)
    assert accepted.returncode == 0, accepted.stderr


def test_telemetry_claiming_another_device_is_filed_under_the_topic_device(
    fleet: SecureFleet,
) -> None:
    fleet.enrol(ALICE)
    fleet.control_plane_ready()
    bob = fleet.connected(BOB, fleet.enrol(BOB))
    spoof = TelemetryEvent(kind="error", data={"device_id": ALICE, "from": ALICE})
    bob.publish(topics.up(BOB, topics.Up.TELEMETRY), spoof.to_bytes(), wait=TIMEOUT)

    wait_until(lambda: fleet.event_count(BOB) == 1, "spoofed event stored")
    assert fleet.event_count(ALICE) == 0
    (stored,) = fleet.api.get("/api/v1/events", params={"kind": "error"}).json()
    assert stored["device_id"] == BOB


def test_revoked_device_loses_its_live_session_and_cannot_reconnect(fleet: SecureFleet) -> None:
    alice_pw, bob_pw = fleet.enrol(ALICE), fleet.enrol(BOB)
    alice = fleet.connected(ALICE, alice_pw)
    bob_inbox = Inbox()
    bob = fleet.link(BOB, BOB, bob_pw)
    bob.subscribe(topics.device_down_filter(BOB), bob_inbox)
    bob_connects: list[int] = []
    bob.on_connect(lambda: bob_connects.append(1))
    bob.start()
    fleet.ready(bob, BOB, fleet.observer())

    response = fleet.api.post(f"/api/v1/devices/{ALICE}/revoke")
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None

    wait_until(lambda: not alice.connected, "the broker to drop alice's session")
    refused = mosquitto_pub(fleet.broker, ALICE, alice_pw, topics.up(ALICE, topics.Up.TELEMETRY))
    assert refused.returncode != 0 and "not authori" in refused.stderr.lower()
    assert ALICE not in fleet.files.password_file.read_text()
    assert ALICE not in read_devices(fleet.files)
    # A revoked id cannot enrol again, even with a fresh token.
    token = fleet.api.post("/api/v1/enrolment/tokens", json={}).json()["token"]
    again = fleet.api.post(
        "/api/v1/enrol", json={"token": token, "device_id": ALICE, "profile": "p"}
    )
    assert again.status_code == 409

    # The reload did not disturb anyone else.
    control = fleet.app.state.link._link
    control.publish(topics.down(BOB, topics.Down.COMMAND), b"after reload", wait=TIMEOUT)
    bob_inbox.wait_for_payload(topics.down(BOB, topics.Down.COMMAND), b"after reload")
    assert bob.connected and len(bob_connects) == 1


def test_oversized_message_is_refused_and_the_broker_keeps_serving(fleet: SecureFleet) -> None:
    alice = fleet.connected(ALICE, fleet.enrol(ALICE))
    bob_pw = fleet.enrol(BOB)
    watcher = fleet.observer("fleet/+/up/#")

    attacker = RawMqttClient(fleet.broker.address, BOB, BOB, bob_pw)
    try:
        # The raw client works: a small message from it gets through.
        attacker.publish(topics.up(BOB, topics.Up.TELEMETRY), b"small")
        watcher.wait_for_payload(topics.up(BOB, topics.Up.TELEMETRY), b"small")
        attacker.publish(topics.up(BOB, topics.Up.TELEMETRY), b"x" * (MAX_PACKET_SIZE + 1))
        assert attacker.closed_by_broker(), "broker kept a client that sent an oversized packet"
    finally:
        attacker.close()

    alice.publish(topics.up(ALICE, topics.Up.TELEMETRY), b"still serving", wait=TIMEOUT)
    watcher.wait_for_payload(topics.up(ALICE, topics.Up.TELEMETRY), b"still serving")
    assert watcher.on(topics.up(BOB, topics.Up.TELEMETRY)) == [b"small"]
    assert fleet.broker.running
