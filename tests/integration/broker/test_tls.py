"""Mosquitto in TLS mode, against the configuration the control plane generates.

Devices enrol through the real API with a CSR and connect with the certificate the
test's CA (``edgefleet.control_plane.trust.pki``) signed. Negative outcomes on topics are asserted
by
delivery, as in test_isolation.py: a marker sent after the attack on the same
path arrives, so anything the attack let through would have arrived before it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.agent.enrolment.enrol import load_or_create_key, make_csr
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.security import read_devices
from edgefleet.control_plane.trust.pki import (
    CertificateAuthority,
    cert_to_pem,
    key_to_pem,
    read_revoked,
)
from edgefleet.fileio import atomic_write
from edgefleet.mqtt import MqttLink, TlsOptions
from tests.support.harness import Inbox
from tests.support.polling import wait_until
from tests.support.tls_fleet import (
    CONTROL,
    TIMEOUT,
    TlsBroker,
    enrol_with_csr,
    start_tls_broker,
    try_connect,
)

pytestmark = pytest.mark.integration

ALICE = "dev-alice0001"
BOB = "dev-bob000001"


@dataclass
class TlsFleet:
    tls: TlsBroker
    app: FastAPI
    api: TestClient
    directory: Path
    links: list[MqttLink] = field(default_factory=list)

    def enrol(self, device_id: str) -> TlsOptions:
        return enrol_with_csr(self.api, device_id, self.directory, self.tls.ca_file)

    def link(self, device_id: str, options: TlsOptions, **kwargs: Any) -> MqttLink:
        link = MqttLink(
            client_id=device_id,
            broker=self.tls.broker.address,
            clean_start=True,
            tls=options,
            **kwargs,
        )
        self.links.append(link)
        return link

    @property
    def control(self) -> MqttLink:
        return self.app.state.link._link  # type: ignore[no-any-return]

    def observer(self) -> Inbox:
        """Everything devices publish, seen by the control plane's own TLS session."""
        inbox = Inbox()
        self.control.subscribe("fleet/+/up/#", inbox)
        probe = "fleet/dev-nobody0001/up/probe"
        self.control.publish(probe, b"observer ready")
        inbox.wait_for_payload(probe, b"observer ready")
        return inbox


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[TlsFleet]:
    tls = start_tls_broker(tmp_path)
    app = create_app(tls.settings(tmp_path / "cp"))
    secure = None
    try:
        with TestClient(app) as api:
            assert app.state.link._link.wait_subscribed(TIMEOUT), "control plane not connected"
            secure = TlsFleet(tls, app, api, tmp_path / "devices")
            yield secure
    finally:
        for link in secure.links if secure else []:
            link.stop()
        tls.stop()


def test_device_with_a_ca_issued_certificate_uses_only_its_own_topics(fleet: TlsFleet) -> None:
    alice_tls = fleet.enrol(ALICE)
    certificate = x509.load_pem_x509_certificate(alice_tls.cert_file.read_bytes())  # type: ignore[union-attr]
    assert certificate.subject.rfc4514_string() == f"CN={ALICE}"
    watcher = fleet.observer()
    inbox = Inbox()
    alice = fleet.link(ALICE, alice_tls)
    for topic_filter in (topics.device_down_filter(ALICE), "fleet/+/down/#", "#"):
        alice.subscribe(topic_filter, inbox)
    alice.start()
    assert alice.wait_connected(TIMEOUT)
    alice.publish(topics.up(ALICE, topics.Up.STATUS), b"alice here", wait=TIMEOUT)
    watcher.wait_for_payload(topics.up(ALICE, topics.Up.STATUS), b"alice here")

    fleet.control.publish(topics.down(BOB, topics.Down.COMMAND), b"for bob", wait=TIMEOUT)
    fleet.control.publish(topics.down(ALICE, topics.Down.COMMAND), b"for alice", wait=TIMEOUT)
    inbox.wait_for_payload(topics.down(ALICE, topics.Down.COMMAND), b"for alice")
    # "#" and "fleet/+/down/#" deliver only what the ACL lets her read.
    assert inbox.topics() == {topics.down(ALICE, topics.Down.COMMAND)}


def test_certificate_for_bob_cannot_publish_on_alices_topics(fleet: TlsFleet) -> None:
    fleet.enrol(ALICE)
    bob_tls = fleet.enrol(BOB)
    watcher = fleet.observer()
    # Bob even asks for Alice's client id: the broker names him by his certificate.
    # (Mosquitto 2.0.11 at times drops a client after a denied QoS 1 publish: paho
    # resends after reconnecting, so he reconnects quickly.)
    bob = fleet.link(ALICE, bob_tls, reconnect_min_delay=0.1, reconnect_max_delay=0.2)
    bob.start()
    assert bob.wait_connected(TIMEOUT)
    for channel in (topics.Up.TELEMETRY, topics.Up.STATUS, topics.Up.REPORT, topics.Up.FETCH):
        bob.publish(topics.up(ALICE, channel), b"forged")
    bob.publish(topics.up(BOB, topics.Up.TELEMETRY), b"marker")
    watcher.wait_for_payload(topics.up(BOB, topics.Up.TELEMETRY), b"marker")
    assert not [t for t in watcher.topics() if t.startswith(f"fleet/{ALICE}/")]


def test_clients_without_a_certificate_or_with_another_cas_are_refused(
    fleet: TlsFleet, tmp_path: Path
) -> None:
    port, ca_file = fleet.tls.broker.port, fleet.tls.ca_file
    genuine = fleet.enrol(ALICE)
    accepted = try_connect(
        port, ca_file=ca_file, cert_file=genuine.cert_file, key_file=genuine.key_file
    )
    assert accepted == "accepted"
    assert try_connect(port, ca_file=ca_file).startswith("refused")
    # Alice's id, and the control plane's name, certified by a CA the broker does not
    # trust (same name as the real one, another key).
    rogue_ca = CertificateAuthority.generate(common_name="edgefleet CA")
    key_file, cert_file = tmp_path / "rogue.key", tmp_path / "rogue.crt"
    csr = make_csr(load_or_create_key(key_file), ALICE)
    atomic_write(cert_file, cert_to_pem(rogue_ca.sign_device_csr(csr, ALICE)))
    assert try_connect(port, ca_file=ca_file, cert_file=cert_file, key_file=key_file).startswith(
        "refused"
    )
    control_cert, control_key = rogue_ca.issue_control_certificate(CONTROL)
    atomic_write(cert_file, cert_to_pem(control_cert))
    atomic_write(key_file, key_to_pem(control_key), mode=0o600)
    assert try_connect(port, ca_file=ca_file, cert_file=cert_file, key_file=key_file).startswith(
        "refused"
    )


def test_plain_mqtt_is_refused_on_the_tls_port(fleet: TlsFleet) -> None:
    body = b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x05plain"
    with socket.create_connection(("127.0.0.1", fleet.tls.broker.port), timeout=TIMEOUT) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        try:
            answer = sock.recv(4)
        except ConnectionResetError:
            answer = b""
    assert answer == b""  # the broker hung up: no CONNACK, accepted or not


def test_revoking_a_device_cuts_its_live_tls_session_and_it_cannot_reconnect(
    fleet: TlsFleet,
) -> None:
    alice_tls, bob_tls = fleet.enrol(ALICE), fleet.enrol(BOB)
    # Alice retries fast, so a reconnect that the broker let through would show.
    alice = fleet.link(ALICE, alice_tls, reconnect_min_delay=0.1, reconnect_max_delay=0.2)
    alice_connects: list[int] = []
    alice.on_connect(lambda: alice_connects.append(1))
    alice.start()
    bob_inbox = Inbox()
    bob = fleet.link(BOB, bob_tls)
    bob.subscribe(topics.device_down_filter(BOB), bob_inbox)
    bob_connects: list[int] = []
    bob.on_connect(lambda: bob_connects.append(1))
    bob.start()
    assert alice.wait_connected(TIMEOUT) and bob.wait_connected(TIMEOUT)
    alice_cert = x509.load_pem_x509_certificate(alice_tls.cert_file.read_bytes())  # type: ignore[union-attr]

    response = fleet.api.post(f"/api/v1/devices/{ALICE}/revoke")
    assert response.status_code == 200, response.text

    wait_until(lambda: not alice.connected, "the broker to drop alice's live session")
    # Her certificate is in the CRL (the broker's copy too), she is no longer a client
    # of the broker, and a new handshake fails.
    assert alice_cert.serial_number in [serial for serial, _ in read_revoked(fleet.tls.pki)]
    assert fleet.tls.files.crl_file.read_bytes() == fleet.tls.pki.crl.read_bytes()
    assert ALICE not in read_devices(fleet.tls.files) and BOB in read_devices(fleet.tls.files)
    refused = try_connect(
        fleet.tls.broker.port,
        ca_file=fleet.tls.ca_file,
        cert_file=alice_tls.cert_file,
        key_file=alice_tls.key_file,
    )
    assert refused != "accepted"
    # No device ever has a password on a TLS broker: the admin listener is cp-admin's.
    assert ALICE not in fleet.tls.files.password_file.read_text()
    assert BOB not in fleet.tls.files.password_file.read_text()

    # Bob kept his session through the reload; Alice, retrying all along, never got back.
    fleet.control.publish(topics.down(BOB, topics.Down.COMMAND), b"after revoke", wait=TIMEOUT)
    bob_inbox.wait_for_payload(topics.down(BOB, topics.Down.COMMAND), b"after revoke")
    assert bob.connected and len(bob_connects) == 1
    assert not alice.connected and len(alice_connects) == 1


def test_enrolment_with_a_ca_needs_a_good_csr_and_a_bad_one_spends_no_token(
    fleet: TlsFleet, tmp_path: Path
) -> None:
    token = fleet.api.post("/api/v1/enrolment/tokens", json={}).json()["token"]

    def enrol(**extra: Any) -> Any:
        body = {"token": token, "device_id": ALICE, "profile": "p", **extra}
        return fleet.api.post("/api/v1/enrol", json=body)

    assert "send a CSR" in enrol().json()["detail"]
    assert enrol(csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n").status_code == 422
    # A CSR asking for the control plane's name still yields a certificate for the id.
    asked = make_csr(load_or_create_key(tmp_path / "alice.key"), CONTROL)
    response = enrol(csr=asked)
    assert response.status_code == 201, response.text
    issued = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert issued.subject.rfc4514_string() == f"CN={ALICE}"
    assert response.json()["ca_certificate"] == fleet.tls.ca_file.read_text()
