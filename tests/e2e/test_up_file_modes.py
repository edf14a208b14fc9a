"""``edgefleet up --mqtt-tls`` keeps fleet data and secrets from other local users.

The real command as its own process, in a fresh data directory: it creates its CA,
keys, first admin token, database and broker; a device enrols with a CSR, sends
telemetry, and is revoked; then the command is stopped and every file and directory
it left is checked. Files: 0600. Directories: 0700, except the data directory itself,
0711, so the broker (another user when started by root) can pass through to its own
directory, which it owns.

Public by design, and so left readable (0644) behind 0700 directories: the TUF
metadata every device downloads, certificates and the CRL the broker presents or
checks, and the control plane's MQTT client id.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet import topics
from edgefleet.agent.enrolment.enrol import load_or_create_key, make_csr
from edgefleet.control_plane.core.netutil import free_port, wait_for_port
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import BrokerAddress, MqttLink, TlsOptions
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e

DEVICE = "dev-modes00001"
PUBLIC = ("repository/metadata/", "pki/ca.crt", "pki/server.crt", "pki/crl.pem", "pki/cp-")
TIMEOUT = 60.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data directory the broker's user can reach (pytest's tmp is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="edgefleet-up-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_up_writes_every_file_0600_and_hands_the_broker_its_own_directory(
    data_dir: Path, tmp_path: Path
) -> None:
    api_port, mqtt_port = free_port(), free_port()
    env = {
        **os.environ,
        "EDGEFLEET_API_AUTH": "true",
        "EDGEFLEET_KEY_PASSPHRASE": "file-modes-test-passphrase",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "edgefleet.control_plane", "up", "--data-dir", str(data_dir)]
    command += ["--port", str(api_port), "--mqtt-port", str(mqtt_port), "--mqtt-tls"]
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        assert wait_for_port("127.0.0.1", api_port, TIMEOUT), (tmp_path / "up.log").read_text()
        token = (
            wait_until(lambda: (data_dir / "admin.token").exists(), "the admin token")
            and (data_dir / "admin.token").read_text()
        )
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )
        wait_until(lambda: api.get("/health").status_code == 200, "the API")
        enrolment = api.post("/enrolment/tokens", json={}).json()["token"]
        key = tmp_path / "device.key"
        csr = make_csr(load_or_create_key(key), DEVICE)
        issued = api.post(
            "/enrol",
            json={"token": enrolment, "device_id": DEVICE, "profile": "p", "csr": csr},
        )
        assert issued.status_code == 201, issued.text
        (tmp_path / "device.crt").write_text(issued.json()["certificate"])
        (tmp_path / "ca.crt").write_text(issued.json()["ca_certificate"])

        device = MqttLink(
            client_id=DEVICE,
            broker=BrokerAddress("127.0.0.1", mqtt_port, tls=True),
            clean_start=True,
            tls=TlsOptions(tmp_path / "ca.crt", tmp_path / "device.crt", key),
        )
        device.start()
        try:
            assert device.wait_connected(TIMEOUT)
            event = TelemetryEvent(kind="inference", data={"n": 1}).to_bytes()
            device.publish(topics.up(DEVICE, topics.Up.TELEMETRY), event, wait=TIMEOUT)

            def stored() -> bool:
                count = api.get("/events/count", params={"device_id": DEVICE}).json()
                return int(count["count"]) > 0

            wait_until(stored, "the device's event stored")
            assert api.post(f"/devices/{DEVICE}/revoke").status_code == 200
            wait_until(lambda: not device.connected, "the revoked device cut off")
        finally:
            device.stop()
        api.close()
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn stops, then the broker
        try:
            up.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()

    expected_broker = os.getuid()
    if os.geteuid() == 0:
        expected_broker = pwd.getpwnam("mosquitto").pw_uid
    assert "runs as root" not in (tmp_path / "up.log").read_text()
    broker_dir = data_dir / "broker"
    assert (broker_dir / "mosquitto.db").exists() and (data_dir / "control-plane.db").exists()
    assert (data_dir / "pki" / "ca.key").exists() and (broker_dir / "auth" / "passwd").exists()

    wrong: list[str] = []
    for root, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            path = Path(root) / name
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
            relative = str(path.relative_to(data_dir))
            if relative.startswith(PUBLIC) and not relative.endswith(".key"):
                expected = 0o644
            if mode != expected:
                wrong.append(f"{path.relative_to(data_dir)} {mode:o}")
            if path.is_relative_to(broker_dir) and info.st_uid != expected_broker:
                wrong.append(f"{path.relative_to(data_dir)} owned by uid {info.st_uid}")
    assert wrong == [], "\n".join(wrong)
    assert stat.S_IMODE(data_dir.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)
    assert broker_dir.stat().st_uid == expected_broker
