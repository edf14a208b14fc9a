"""Device logs on demand: a real Mosquitto, the control plane and an agent process.

The agent's log ring is seeded before it starts with records two hours old (what a
previous run of the agent left), so ``since`` has something to leave out; the agent
then logs a known command id of a command sent to it. ``GET /devices/{id}/logs`` and
``edgefleet device logs`` must return those lines, filter by ``since``, stay within
``max_bytes`` (saying what they left out), refuse an offline or silent device with a
504 that says so, and never take another device's answer for this one's.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet import topics
from edgefleet.agent.telemetry.logstore import LogStore
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.cli import devices as device_cli
from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.client import ApiClient
from edgefleet.messages import (
    DeviceCommand,
    DeviceStatus,
    LogChunk,
    LogRecord,
    LogRequest,
    decode_as,
)
from edgefleet.mqtt import Incoming, MqttLink
from tests.support.control_plane import ControlPlane
from tests.support.harness import provision_agent, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-logs00001"
FORGER = "dev-forger0001"
MARKER = "marker-[bold]7f3a9c"  # rich markup in it: the CLI must print it as it is
OLD_LINES = 300
OLD_AGE_S = 7200
GROUP = "cp-logs-group"  # the replicas' shared-subscription group


@dataclass
class Rig:
    api: TestClient
    broker: MosquittoBroker
    agent: subprocess.Popen[bytes]
    agent_log: Path

    def logs(self, **params: Any) -> dict[str, Any]:
        response = self.api.get(f"/api/v1/devices/{DEVICE}/logs", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def online(self, device_id: str = DEVICE) -> bool:
        response = self.api.get(f"/api/v1/devices/{device_id}")
        return response.status_code == 200 and bool(response.json()["online"])


def seed_old_records(data_dir: Path) -> None:
    """What an earlier run of the agent left in its ring, two hours ago."""
    store = LogStore(data_dir)
    for i in range(OLD_LINES):
        record = logging.LogRecord(
            "edgefleet.agent.daemon", logging.INFO, __file__, 1, f"old line {i:04d}", None, None
        )
        record.created = time.time() - OLD_AGE_S
        store.handle(record)
    store.close()


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker, control_plane: ControlPlane) -> Iterator[Rig]:
    api = control_plane(mqtt_shared_group=GROUP)
    config, _port = provision_agent(
        tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
    )
    seed_old_records(tmp_path / "agent")
    log = tmp_path / "agent.out"
    agent = start_agent(config, log)
    rig = Rig(api=api, broker=broker, agent=agent, agent_log=log)
    try:
        wait_until(rig.online, "the agent to come online")
        yield rig
    finally:
        agent.terminate()
        agent.wait(15)


def send_marker(rig: Rig) -> None:
    command = DeviceCommand(command="shadow_stop", command_id=MARKER)
    rig.api.app.state.link.publish_command(DEVICE, command)  # type: ignore[attr-defined]


def marker_lines(logs: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in logs["lines"] if MARKER in line["message"]]


def test_device_logs_returns_the_agents_lines_within_since_and_max_bytes(rig: Rig) -> None:
    send_marker(rig)

    def with_marker() -> dict[str, Any] | None:
        found = rig.logs(since=3600)
        return found if marker_lines(found) else None

    logs = wait_until(with_marker, "the command's log line in the device's log")
    (line,) = marker_lines(logs)
    assert line["message"] == f"command received command=shadow_stop id={MARKER}"
    assert line["level"] == "INFO" and line["logger"] == "edgefleet.agent.daemon"
    assert any(ln["message"].startswith("agent started") for ln in logs["lines"])
    # since: the seeded lines are two hours old.
    assert not any(ln["message"].startswith("old line") for ln in logs["lines"])
    assert not logs["truncated"] and logs["omitted"] == 0
    wider = rig.logs(since=3 * 3600)
    old = [ln["message"] for ln in wider["lines"] if ln["message"].startswith("old line")]
    assert old == [f"old line {i:04d}" for i in range(OLD_LINES)]  # from before the restart
    # max_bytes: the newest lines that fit, the rest counted as left out.
    bounded = rig.logs(since=3 * 3600, max_bytes=2000)
    assert bounded["truncated"] and bounded["omitted"] > OLD_LINES - 30
    assert sum(len(ln["message"]) + 60 for ln in bounded["lines"]) <= 2000 + 200
    assert bounded["lines"][-1]["ts"] >= line["ts"]  # the newest are the ones kept

    # The CLI prints the lines as they are, and says what was left out.
    def client(api: str, timeout: float = 60.0) -> ApiClient:
        wrapped = ApiClient(api, timeout=timeout)
        wrapped._http = TestClient(rig.api.app, base_url="http://testserver/api/v1")
        return wrapped

    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device_cli, "ApiClient", client)
        result = runner.invoke(cli, ["device", "logs", DEVICE, "--since", "1h"])
        assert result.exit_code == 0, result.output
        expected = f"INFO edgefleet.agent.daemon command received command=shadow_stop id={MARKER}"
        assert expected in result.stdout
        assert "old line" not in result.stdout
        result = runner.invoke(
            cli, ["device", "logs", DEVICE, "--since", "3h", "--max-bytes", "2000"]
        )
        assert result.exit_code == 0, result.output
        assert "older lines left out" in result.stderr
        assert "old line 0000" not in result.stdout

    audit = rig.api.get("/api/v1/audit", params={"action": "device.logs"}).json()
    assert len(audit) >= 4 and all(entry["target"] == DEVICE for entry in audit)

    # Offline: the agent stops cleanly, says so, and the request is refused at once.
    rig.agent.terminate()
    rig.agent.wait(15)
    wait_until(lambda: not rig.online(), "the device to be offline")
    response = rig.api.get(f"/api/v1/devices/{DEVICE}/logs", params={"since": 60})
    assert response.status_code == 504
    assert "offline" in response.json()["detail"] and DEVICE in response.json()["detail"]
    unknown = rig.api.get("/api/v1/devices/dev-nobody0001/logs")
    assert unknown.status_code == 404


def test_another_device_cannot_answer_for_this_one(rig: Rig) -> None:
    """The forger sees the request (the test broker is anonymous; a secured one would
    not let it) and answers on its own up topic with the request's id first."""
    forger = MqttLink(client_id=FORGER, broker=rig.broker.address, clean_start=True)
    forged = threading.Event()

    def answer_for_the_device(message: Incoming) -> None:
        request = decode_as(message.payload, LogRequest)
        chunk = LogChunk(
            request_id=request.request_id,
            records=[LogRecord(ts=time.time(), level="INFO", logger="x", message="forged")],
        )
        forger.publish(topics.up(FORGER, topics.Up.LOGS), chunk.to_bytes(), qos=1)
        forged.set()

    forger.subscribe(f"{topics.ROOT}/+/down/{topics.Down.LOGS.value}", answer_for_the_device)
    forger.start()
    try:
        assert forger.wait_subscribed(10)
        logs = rig.logs(since=3600)
        assert forged.is_set()
        assert all(line["message"] != "forged" for line in logs["lines"])
        assert any(line["message"].startswith("agent started") for line in logs["lines"])
    finally:
        forger.stop()


def test_every_replica_gets_the_answer_to_the_request_it_sent(
    rig: Rig, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Two replicas, one database, one shared group: device traffic in the group goes to
    one or the other, but a log answer reaches the replica whose API call waits."""
    database = f"sqlite:///{tmp_path / 'cp' / 'control-plane.db'}"
    other = control_plane(
        data_dir=tmp_path / "cp-b", database_url=database, mqtt_shared_group=GROUP
    )
    # Pairs in a row: a broker sharing answers out in turn would hand one of each pair
    # to the replica that did not ask.
    for api in (rig.api, rig.api, other, other) * 2:
        response = api.get(f"/api/v1/devices/{DEVICE}/logs", params={"since": 600, "timeout": 5})
        assert response.status_code == 200, response.text
        assert any(ln["message"].startswith("agent started") for ln in response.json()["lines"])


def test_a_device_that_does_not_answer_is_a_504_that_says_so(
    control_plane: ControlPlane, broker: MosquittoBroker
) -> None:
    api = control_plane()
    silent = MqttLink(client_id="dev-silent0001", broker=broker.address, clean_start=True)
    silent.start()
    try:
        assert silent.wait_connected(10)
        status = DeviceStatus(online=True, profile=PROFILE)
        silent.publish(topics.up("dev-silent0001", topics.Up.STATUS), status.to_bytes(), wait=10)
        wait_until(
            lambda: api.get("/api/v1/devices/dev-silent0001").status_code == 200,
            "the silent device to be known",
        )
        response = api.get("/api/v1/devices/dev-silent0001/logs", params={"timeout": 1})
        assert response.status_code == 504
        assert "did not answer the log request within 1s" in response.json()["detail"]
    finally:
        silent.stop()
