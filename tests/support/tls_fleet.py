"""A Mosquitto broker in TLS mode, set up the way ``edgefleet up --mqtt-tls`` does it.

The test's CA is made by ``edgefleet.control_plane.trust.pki``; ``prepare_tls`` issues the broker's
server certificate and the control plane's client certificate from it and writes the
CRL; the broker runs with exactly the configuration ``edgefleet.control_plane.broker.mosquitto``
renders.
``try_connect`` speaks TLS and MQTT 3.1.1 over a plain socket, so a refusal is seen
where it happens (handshake or CONNACK) without a client library retrying behind it.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from edgefleet.agent.enrolment.enrol import load_or_create_key, make_csr
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker, prepare_tls
from edgefleet.control_plane.broker.security import BrokerAuthFiles
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.trust.pki import CertificateAuthority, PkiFiles
from edgefleet.fileio import atomic_write
from edgefleet.mqtt import TlsOptions

CONTROL = "cp-tlsplane01"
HOSTS = ("127.0.0.1", "localhost")
PASSPHRASE = "ca-passphrase-for-tests"
TIMEOUT = 20.0


@dataclass
class TlsBroker:
    """The CA, the broker's auth files and the running TLS broker."""

    pki: PkiFiles
    ca: CertificateAuthority
    files: BrokerAuthFiles
    broker: MosquittoBroker

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert

    def settings(self, data_dir: Path, **overrides: Any) -> Settings:
        """The control plane's settings in TLS mode (what ``up --mqtt-tls`` builds)."""
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "broker_url": self.broker.url,
            "client_id": CONTROL,
            "broker_auth_dir": self.files.directory,
            "pki_dir": self.pki.directory,
            "broker_ca_file": self.pki.ca_cert,
            "broker_cert_file": self.pki.client_cert(CONTROL),
            "broker_key_file": self.pki.client_key(CONTROL),
            "key_passphrase": PASSPHRASE,
            "enrol_burst": 50,
        }
        values.update(overrides)
        return Settings(**values)

    def stop(self) -> None:
        self.broker.kill()


def start_tls_broker(directory: Path) -> TlsBroker:
    pki = PkiFiles(directory / "pki")
    ca = CertificateAuthority.load_or_create(pki, passphrase=PASSPHRASE.encode())
    files = BrokerAuthFiles(directory / "broker" / "auth")
    listener = prepare_tls(pki, ca, files, hosts=HOSTS, control_name=CONTROL)
    broker = MosquittoBroker(directory / "broker", security=files, tls=listener)
    broker.start()
    return TlsBroker(pki, ca, files, broker)


def enrol_with_csr(api: TestClient, device_id: str, directory: Path, ca_file: Path) -> TlsOptions:
    """Enrol ``device_id`` through the API as the agent does: key here, CSR out, cert back."""
    key_file, cert_file = directory / f"{device_id}.key", directory / f"{device_id}.crt"
    csr = make_csr(load_or_create_key(key_file), device_id)
    token = api.post("/api/v1/enrolment/tokens", json={}).json()["token"]
    response = api.post(
        "/api/v1/enrol",
        json={"token": token, "device_id": device_id, "profile": "p", "csr": csr},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["username"] == device_id and body["password"] is None
    atomic_write(cert_file, body["certificate"].encode())
    return TlsOptions(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def try_connect(
    port: int, *, ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> str:
    """``"accepted"``, or why the broker would not have this client (handshake or CONNACK)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    body = _string(b"MQTT") + bytes([4, 0b0000_0010]) + struct.pack("!H", 30)
    body += _string(b"probe-client")
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(bytes([0x10, len(body)]) + body)
            connack = sock.recv(4)
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e}"
    if len(connack) == 4 and connack[0] == 0x20 and connack[3] == 0:
        return "accepted"
    return f"refused: CONNACK {connack!r}"


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value
