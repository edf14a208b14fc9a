"""What an enrolled device may do on the broker, tried from the device's side.

Both secured modes the control plane generates run here: password + client id
(``MosquittoBroker(security=...)``) and TLS with client certificates from the
control plane's CA (``prepare_tls``). Devices enrol through the real API. The probe
(``mqtt5_probe``) speaks MQTT 5 over a plain socket and reads the broker's own reason
codes, so a refusal is asserted where it happens: CONNACK, SUBACK (0x87 Not
authorized, never a grant followed by silent filtering at delivery), PUBACK.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.broker.security import (
    ADMIN_USER,
    BrokerAuthFiles,
    add_control_user,
    read_admin,
    write_auth_files,
)
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import MqttLink, TlsOptions
from tests.support.harness import Inbox
from tests.support.mqtt5_probe import GRANTED_QOS_1, NOT_AUTHORIZED, Mqtt5Probe
from tests.support.polling import wait_until
from tests.support.tls_fleet import enrol_with_csr, start_tls_broker

pytestmark = pytest.mark.integration

ALICE = "dev-alice0001"
BOB = "dev-bob000001"
CAROL = "dev-carol0001"
CONTROL_USER = "cp-controlplane"
TIMEOUT = 20.0
EVENTS = 20


@dataclass
class Rig:
    """A secured broker, the control plane on it, and devices enrolled through its API."""

    mode: str
    broker: MosquittoBroker
    files: BrokerAuthFiles
    app: FastAPI
    api: TestClient
    directory: Path
    ca_file: Path | None = None
    credentials: dict[str, Any] = field(default_factory=dict)
    links: list[MqttLink] = field(default_factory=list)
    probes: list[Mqtt5Probe] = field(default_factory=list)

    def enrol(self, device_id: str) -> None:
        if self.mode == "tls":
            assert self.ca_file is not None
            options = enrol_with_csr(self.api, device_id, self.directory, self.ca_file)
            self.credentials[device_id] = options
            return
        token = self.api.post("/api/v1/enrolment/tokens", json={}).json()["token"]
        response = self.api.post(
            "/api/v1/enrol", json={"token": token, "device_id": device_id, "profile": "p"}
        )
        assert response.status_code == 201, response.text
        self.credentials[device_id] = response.json()["password"]

    def probe(
        self, device_id: str, *, client_id: str | None = None, port: int | None = None
    ) -> Mqtt5Probe:
        """A connected probe with ``device_id``'s credentials (CONNACK asserted 0)."""
        probe = self.raw_probe(device_id, client_id=client_id, port=port)
        assert probe.connect() == 0, f"{device_id} could not connect"
        return probe

    def raw_probe(
        self,
        device_id: str | None,
        *,
        client_id: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Mqtt5Probe:
        context = None
        if self.mode == "tls" and port is None:
            assert self.ca_file is not None
            context = ssl.create_default_context(cafile=str(self.ca_file))
            if device_id is not None:
                options: TlsOptions = self.credentials[device_id]
                context.load_cert_chain(str(options.cert_file), str(options.key_file))
        elif self.mode == "password" and device_id is not None and username is None:
            username, password = device_id, self.credentials[device_id]
        probe = Mqtt5Probe(
            "127.0.0.1",
            port or self.broker.port,
            client_id or device_id or "probe-anonymous",
            username=username,
            password=password,
            context=context,
        )
        self.probes.append(probe)
        return probe

    def link(self, device_id: str) -> MqttLink:
        if self.mode == "tls":
            link = MqttLink(
                client_id=device_id,
                broker=self.broker.address,
                clean_start=True,
                tls=self.credentials[device_id],
            )
        else:
            link = MqttLink(
                client_id=device_id,
                broker=self.broker.address,
                clean_start=True,
                username=device_id,
                password=self.credentials[device_id],
            )
        self.links.append(link)
        return link

    @property
    def control(self) -> MqttLink:
        return self.app.state.link._link  # type: ignore[no-any-return]

    def shared_group(self) -> str:
        """The group the control plane really subscribes in (read off its own link)."""
        groups = {s.shared_group for s in self.control._subscriptions if s.shared_group}
        assert len(groups) == 1, groups
        return str(groups.pop())

    def event_count(self, device_id: str) -> int:
        response = self.api.get("/api/v1/events/count", params={"device_id": device_id})
        return int(response.json()["count"])


@pytest.fixture(params=["password", "tls"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    mode = str(request.param)
    ca_file = None
    if mode == "tls":
        tls = start_tls_broker(tmp_path)
        broker, files, ca_file = tls.broker, tls.files, tls.ca_file
        settings = tls.settings(tmp_path / "cp")
    else:
        files = BrokerAuthFiles(tmp_path / "broker" / "auth")
        control_password = add_control_user(files, CONTROL_USER)
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
    rig = None
    try:
        with TestClient(app) as api:
            assert app.state.link._link.wait_subscribed(TIMEOUT), "control plane not connected"
            rig = Rig(mode, broker, files, app, api, tmp_path / "devices", ca_file)
            rig.directory.mkdir()
            yield rig
    finally:
        for link in rig.links if rig else []:
            link.stop()
        for probe in rig.probes if rig else []:
            probe.close()
        broker.kill()


def test_device_subscribes_to_its_own_and_the_broadcast_topics_and_nothing_else(
    rig: Rig,
) -> None:
    rig.enrol(ALICE)
    rig.enrol(BOB)
    group = rig.shared_group()
    alice = rig.probe(ALICE)

    allowed = [
        topics.device_down_filter(ALICE),
        f"fleet/{ALICE}/down/+",
        topics.down(ALICE, topics.Down.COMMAND),
        "fleet/all/down/#",
        topics.blobs_filter(),  # retained target chunks: read by every device
        topics.blob_index("ab" * 32),
        topics.blob_chunk("ab" * 32, 3),
    ]
    assert alice.subscribe(*allowed) == [GRANTED_QOS_1] * len(allowed)

    forbidden = [
        "#",
        "+/#",
        "$SYS/#",
        "$SYS/broker/clients/connected",
        "fleet/#",
        "fleet/+/down/#",
        "fleet/+/up/#",
        "+/+/down/#",
        topics.device_down_filter(BOB),
        topics.down(BOB, topics.Down.COMMAND),
        f"fleet/{ALICE}/up/#",  # her own uplink: she writes it, never reads it
        f"fleet/{ALICE}/#",
        *(f"$share/{group}/{topics.up_filter(channel)}" for channel in topics.Up),
        f"$share/{group}/fleet/+/up/#",
        f"$share/{group}/#",
        "$share/edgefleet-cp/fleet/+/up/#",  # a guessed group
        "$share/guess/fleet/+/up/telemetry",
        f"$share/guess/{topics.device_down_filter(ALICE)}",  # even her own topics, shared
        "$CONTROL/dynamic-security/#",
        "$CONTROL/dynamic-security/v1/response",
    ]
    codes = alice.subscribe(*forbidden)
    assert dict(zip(forbidden, codes, strict=True)) == dict.fromkeys(forbidden, NOT_AUTHORIZED)


def test_device_publishes_only_on_its_own_up_topics_whatever_client_id_it_asks_for(
    rig: Rig,
) -> None:
    rig.enrol(ALICE)
    rig.enrol(BOB)
    forbidden = [
        *(topics.up(BOB, channel) for channel in topics.Up),
        topics.down(ALICE, topics.Down.COMMAND),
        topics.down(BOB, topics.Down.COMMAND),
        "fleet/all/down/command",
        topics.blob_index("ab" * 32),  # nobody but the control plane writes blobs
        topics.blob_chunk("ab" * 32, 0),
        "fleet/anything",
        "$SYS/broker/uptime",
        "$CONTROL/dynamic-security/v1",
    ]
    for topic in forbidden:
        # Asking for Bob's client id changes nothing: the broker names her by her
        # credentials. A fresh connection each time: a refusal may end one.
        probe = rig.probe(ALICE, client_id=BOB)
        assert probe.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        probe.close()
    probe = rig.probe(ALICE, client_id=BOB)
    assert probe.publish(topics.up(ALICE, topics.Up.STATUS), b"{}") == 0
    # Nothing she tried reached the control plane as Bob's.
    assert rig.event_count(BOB) == 0


def test_every_device_reads_the_broadcast_topic(rig: Rig) -> None:
    inboxes = {}
    for device_id in (ALICE, BOB):
        rig.enrol(device_id)
        inboxes[device_id] = Inbox()
        link = rig.link(device_id)
        link.subscribe("fleet/all/down/#", inboxes[device_id])
        link.start()
        assert link.wait_subscribed(TIMEOUT)
    topic = f"{topics.ROOT}/{topics.BROADCAST}/down/command"
    rig.control.publish(topic, b"to everyone", wait=TIMEOUT)
    for inbox in inboxes.values():
        inbox.wait_for_payload(topic, b"to everyone")


def test_device_joining_the_control_planes_share_group_costs_nobody_a_message(rig: Rig) -> None:
    for device_id in (BOB, CAROL):
        rig.enrol(device_id)
    group = rig.shared_group()
    thief = rig.probe(BOB)
    attempts = [
        *(f"$share/{group}/{topics.up_filter(channel)}" for channel in topics.Up),
        "$share/edgefleet-cp/fleet/+/up/telemetry",
    ]
    assert thief.subscribe(*attempts) == [NOT_AUTHORIZED] * len(attempts)

    carol = rig.link(CAROL)
    carol.start()
    assert carol.wait_connected(TIMEOUT)
    for i in range(EVENTS):
        event = TelemetryEvent(kind="inference", data={"i": i})
        carol.publish(topics.up(CAROL, topics.Up.TELEMETRY), event.to_bytes(), wait=TIMEOUT)
    wait_until(lambda: rig.event_count(CAROL) >= EVENTS, f"all {EVENTS} of carol's events stored")
    assert rig.event_count(CAROL) == EVENTS
    # Bob, still connected, was handed none of them.
    assert thief.subscribe(topics.device_down_filter(BOB)) == [GRANTED_QOS_1]
    assert thief.received == []


def test_no_other_way_in_for_a_device(rig: Rig) -> None:
    rig.enrol(ALICE)
    assert rig.raw_probe(None).connect() != 0  # anonymous
    if rig.mode == "password":
        assert rig.raw_probe(None, username=ALICE, password="guessed").connect() != 0
        assert rig.raw_probe(None, username=ADMIN_USER, password="guessed").connect() != 0
        # Her own password does not make her the admin or the control plane.
        password = rig.credentials[ALICE]
        for name in (ADMIN_USER, CONTROL_USER):
            assert rig.raw_probe(None, username=name, password=password).connect() != 0
        return
    # TLS: the admin listener is loopback and password-only; no device has a password.
    admin = read_admin(rig.files)
    assert admin is not None and admin.host == "127.0.0.1" and admin.port != rig.broker.port
    config = (rig.broker.data_dir / "mosquitto.conf").read_text()
    assert f"listener {admin.port} 127.0.0.1" in config.splitlines()
    for username, password in ((ALICE, None), (ALICE, ""), (ALICE, "guessed"), (ADMIN_USER, "x")):
        probe = rig.raw_probe(None, port=admin.port, username=username, password=password)
        assert probe.connect() != 0, username
