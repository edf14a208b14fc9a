"""HTTPS for the API, and a device that enrols over it with a CSR and works over mqtts.

The control plane runs under uvicorn with a server certificate from the test's CA
(``edgefleet.control_plane.trust.pki``); the device is the real ``edgefleet-agent`` in its own
processes: ``enrol`` makes its key, sends a CSR and saves the certificate, ``run``
connects to the TLS broker with it and installs a signed bundle.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from cryptography import x509
from fastapi import FastAPI

from edgefleet.agent.config import parse_config
from edgefleet.agent.enrolment.enrol import EnrolmentError, enrol
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.client import ApiClient, ApiError
from edgefleet.control_plane.core.netutil import free_port, wait_for_port
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.trust.pki import CertificateAuthority, PkiFiles, ensure_server_files
from edgefleet.messages import BundleOffer
from edgefleet.tensors import encode_tensor
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.polling import wait_until
from tests.support.tls_fleet import TIMEOUT, TlsBroker, start_tls_broker

pytestmark = pytest.mark.integration

DEVICE = "dev-tlsagent01"
PROFILE = "x86-64-gateway-onnx"


@contextmanager
def serve_https(app: FastAPI, pki: PkiFiles) -> Iterator[str]:
    """Run ``app`` under uvicorn over HTTPS with ``pki``'s server certificate."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for_port("127.0.0.1", port, TIMEOUT), "uvicorn did not start"
        wait_until(lambda: server.started, "uvicorn to finish its start-up")
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)


def test_api_over_https_verifies_with_the_ca_file_and_fails_without_it(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = PkiFiles(tmp_path / "pki")
    ca = CertificateAuthority.load_or_create(pki)
    ensure_server_files(pki, ca, ["127.0.0.1", "localhost"])
    settings = Settings(
        data_dir=tmp_path / "cp", broker_url=broker.url, broker_auth_dir=tmp_path / "auth"
    )
    with serve_https(create_app(settings), pki) as base:
        with ApiClient(base, ca_file=pki.ca_cert) as client:
            assert client.health()
        with ApiClient(base) as client, pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED"):
            client.health()
        monkeypatch.setenv("EDGEFLEET_API_CA_FILE", str(pki.ca_cert))
        with ApiClient(base) as client:  # the CLI's way: the CA named in the environment
            token = client._call("POST", "/enrolment/tokens", json={})["token"]

        config = parse_config(
            f'device_id = "{DEVICE}"\nprofile = "p1"\n'
            f'data_dir = "{tmp_path / "agent"}"\ntrust_root = "{tmp_path / "root.json"}"\n'
        )
        with pytest.raises(EnrolmentError, match="CERTIFICATE_VERIFY_FAILED"):
            enrol(config, api_url=base, token=token)
        # The refused handshake never reached the API: the token is still good.
        credentials = enrol(config, api_url=base, token=token, ca_file=pki.ca_cert)
        assert credentials.username == DEVICE


def test_a_password_control_plane_refuses_a_csr(tmp_path: Path, broker: MosquittoBroker) -> None:
    settings = Settings(
        data_dir=tmp_path / "cp", broker_url=broker.url, broker_auth_dir=tmp_path / "auth"
    )
    with serve(settings) as api:
        token = api.post("/api/v1/enrolment/tokens", json={}).json()["token"]
        body = {"token": token, "device_id": DEVICE, "profile": "p", "csr": "x"}
        refused = api.post("/api/v1/enrol", json=body)
        assert refused.status_code == 422 and "omit the CSR" in refused.json()["detail"]
        del body["csr"]
        assert api.post("/api/v1/enrol", json=body).json()["password"]


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsBroker]:
    setup = start_tls_broker(tmp_path)
    ensure_server_files(setup.pki, setup.ca, ["127.0.0.1", "localhost"])
    try:
        yield setup
    finally:
        setup.stop()


def agent(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def test_device_enrols_over_https_with_a_csr_then_installs_a_bundle_over_mqtts(
    tmp_path: Path, tls: TlsBroker, digits: DigitsModel
) -> None:
    app = create_app(tls.settings(tmp_path / "cp"))
    with serve_https(app, tls.pki) as base, ApiClient(base, ca_file=tls.ca_file) as api:
        api.register_model(
            name="digits", version="1", model=digits.onnx_bytes, samples=digits.samples
        )
        bundle = api.build_bundle(model="digits", version="1", profile=PROFILE)
        token = api._call("POST", "/enrolment/tokens", json={})["token"]
        root = tmp_path / "root.json"
        root.write_bytes(api.trust_root())

        device_dir, inference_port = tmp_path / "agent", free_port()
        config = tmp_path / "agent.toml"
        config.write_text(
            f'device_id = "{DEVICE}"\nprofile = "{PROFILE}"\n'
            f'broker = "{tls.broker.url}"\n'
            f'data_dir = "{device_dir}"\ntrust_root = "{root}"\n'
            f"[inference]\nport = {inference_port}\n"
            f'[tls]\nca_file = "{device_dir / "tls" / "ca.crt"}"\n'
            f'cert_file = "{device_dir / "tls" / "device.crt"}"\n'
            f'key_file = "{device_dir / "tls" / "device.key"}"\n'
        )
        log = tmp_path / "agent.log"
        enrolment = ["enrol", "--config", str(config), "--api", base, "--token", token]
        # Without the CA the agent cannot verify the API: nothing is sent.
        assert agent(*enrolment, log=log).wait(TIMEOUT) == 2
        assert "CERTIFICATE_VERIFY_FAILED" in log.read_text()
        assert agent(*enrolment, "--ca-file", str(tls.ca_file), log=log).wait(TIMEOUT) == 0

        key_file = device_dir / "tls" / "device.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        issued = x509.load_pem_x509_certificate((device_dir / "tls" / "device.crt").read_bytes())
        assert issued.subject.rfc4514_string() == f"CN={DEVICE}"
        assert (device_dir / "tls" / "ca.crt").read_bytes() == tls.ca_file.read_bytes()
        assert not (device_dir / "credentials.json").exists()  # no password anywhere

        daemon = agent("run", "--config", str(config), log=log)
        try:
            wait_until(lambda: len(api.list_devices()) == 1, "the device online")
            app.state.link.publish_offer(
                DEVICE,
                BundleOffer(
                    bundle_id=bundle["id"], target=bundle["target"], release=bundle["release"]
                ),
            )
            url = f"http://127.0.0.1:{inference_port}"
            wait_until(lambda: _ready(url), "the bundle installed and served", timeout=60)
            body = {"inputs": [encode_tensor("input", np.zeros((1, 64), np.float32))]}
            answer = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=TIMEOUT)
            assert answer.status_code == 200 and answer.json()["model_version"] == "1"
            status = json.loads((device_dir / "status.json").read_text())
            assert status["link"] == "connected" and status["broker"].startswith("mqtts://")
        finally:
            daemon.terminate()
            daemon.wait(TIMEOUT)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
