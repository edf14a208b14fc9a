"""Remote configuration end to end: a real Mosquitto, the control plane and an agent process.

One agent, one story: values set for the fleet, a group and the device reach the
running agent and are applied without a restart (the same process reports them, and
its local endpoint serves the flags); a value the schema refuses never leaves the API;
a value only the device can judge (a spool bound over its disk budget) is refused by
the device with its reason while the last good configuration stays; a restart key is
reported pending, then in effect after a restart; and a change made while the agent is
away reaches it when it comes back; a device first seen after a change gets its values
when it comes online. Every change is in the audit log.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.cli import config as config_cli
from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.client import ApiClient
from edgefleet.messages import DesiredConfig, DeviceStatus, decode_as
from edgefleet.mqtt import MqttLink
from tests.support.control_plane import ControlPlane
from tests.support.harness import Inbox, provision_agent, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-config0001"
GROUP = "ring-a"
NEWCOMER = "dev-config0002"


def change(api: TestClient, path: str, **body: Any) -> dict[str, Any]:
    response = api.patch(f"/api/v1/config/{path}", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def view(api: TestClient) -> dict[str, Any]:
    response = api.get(f"/api/v1/config/devices/{DEVICE}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def reported(api: TestClient, version: int) -> dict[str, Any]:
    """The device's view once it has answered desired version ``version``."""

    def answered() -> dict[str, Any] | None:
        found = view(api)
        return found if found["reported_version"] == version else None

    return wait_until(answered, f"{DEVICE} to report config version {version}")


def online(api: TestClient) -> bool:
    response = api.get(f"/api/v1/devices/{DEVICE}")
    return response.status_code == 200 and bool(response.json()["online"])


def flags(port: int, name: str = "") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/v2/flags" + (f"/{name}" if name else ""))


def test_config_reaches_the_running_agent_is_refused_per_key_and_waits_for_it_offline(
    tmp_path: Path, broker: MosquittoBroker, control_plane: ControlPlane
) -> None:
    api = control_plane()
    config, port = provision_agent(
        tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
    )
    log = tmp_path / "agent.out"
    agent: subprocess.Popen[bytes] = start_agent(config, log)
    try:
        wait_until(lambda: online(api), "the agent to come online")
        group = api.put(f"/api/v1/groups/{GROUP}", json={"device_ids": [DEVICE]})
        assert group.status_code == 200, group.text

        # Fleet, group and device values; the device's own win. Applied live.
        change(api, "fleet", set={"telemetry.window_s": 30, "flags.greeting": "fleet"})
        change(api, f"groups/{GROUP}", set={"logs.level": "DEBUG", "drift.window": 200})
        device = change(api, f"devices/{DEVICE}", set={"flags.greeting": "device"})
        assert device["sources"] == {
            "drift.window": f"group:{GROUP}",
            "flags.greeting": "device",
            "logs.level": f"group:{GROUP}",
            "telemetry.window_s": "fleet",
        }
        now = reported(api, device["desired_version"])
        assert now["in_sync"] and now["diff"] == {} and now["refused"] == {}
        assert now["applied"] == {
            "drift.window": 200,
            "flags.greeting": "device",
            "logs.level": "DEBUG",
            "telemetry.window_s": 30.0,
        }
        assert now["pending_restart"] == []
        assert agent.poll() is None  # the same process: applied without a restart
        assert flags(port).json() == {
            "version": device["desired_version"],
            "flags": {"greeting": "device"},
        }
        assert flags(port, "greeting").json()["value"] == "device"
        assert flags(port, "absent").status_code == 404

        # The schema refuses at the API, naming the key and why; nothing is sent.
        refused = api.patch(
            f"/api/v1/config/devices/{DEVICE}",
            json={"set": {"logs.level": "LOUD", "flags.ok": True}},
        )
        assert refused.status_code == 422
        assert "logs.level: must be one of DEBUG, INFO, WARNING, ERROR" in refused.json()["detail"]

        # Any payload is an answer with a reason, never a 500.
        deep = '{"set": {"flags.x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
        for body, status in (
            (deep, 400),
            ('{"set": {' + ",".join(f'"flags.f{i}": {i}' for i in range(300)) + "}}", 422),
            ('{"set": "nope"}', 422),
            ('{"set": {"flags.a": true}, "unset": ["flags.a"]}', 422),
            ('{"set": {"drift.window": [[1]]}}', 422),
        ):
            answer = api.patch(
                "/api/v1/config/fleet",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == status, answer.text
            assert answer.json()["detail"]

        # Only the device knows its disk budget (2048 MB): it refuses, keeps the rest.
        over = change(
            api,
            f"devices/{DEVICE}",
            set={"telemetry.spool_max_mb": 4096, "flags.greeting": "second"},
        )
        now = reported(api, over["desired_version"])
        assert "over this device's disk budget" in now["refused"]["telemetry.spool_max_mb"]
        assert now["applied"]["flags.greeting"] == "second"
        assert "telemetry.spool_max_mb" not in now["applied"]
        assert not now["in_sync"]
        assert now["diff"] == {"telemetry.spool_max_mb": {"desired": 4096.0, "reported": None}}
        assert flags(port, "greeting").json()["value"] == "second"

        # A restart key within the budget: held, reported pending until a restart.
        fits = change(api, f"devices/{DEVICE}", set={"telemetry.spool_max_mb": 32})
        now = reported(api, fits["desired_version"])
        assert now["in_sync"] and now["pending_restart"] == ["telemetry.spool_max_mb"]

        # The CLI reads the same: get shows the merge, diff finds nothing out of sync.
        def client(api_url: str, timeout: float = 60.0) -> ApiClient:
            wrapped = ApiClient(api_url, timeout=timeout)
            wrapped._http = TestClient(api.app, base_url="http://testserver/api/v1")
            return wrapped

        runner = CliRunner()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(config_cli, "ApiClient", client)
            shown = runner.invoke(cli, ["config", "get", "--device", DEVICE])
            assert shown.exit_code == 0, shown.output
            assert f"group:{GROUP}" in shown.stdout and '"second"' in shown.stdout
            assert "applies at its next restart: telemetry.spool_max_mb" in shown.stderr
            assert runner.invoke(cli, ["config", "diff"]).exit_code == 0
            set_by_cli = runner.invoke(
                cli,
                ["config", "set", "--device", DEVICE, "flags.limit=5", "--unset", "flags.greeting"],
            )
            assert set_by_cli.exit_code == 0, set_by_cli.output

        # Away: a change made while the agent is stopped reaches it when it is back, and
        # the restart put the held spool bound in effect.
        agent.terminate()
        agent.wait(15)
        wait_until(lambda: not online(api), "the device to be offline")
        away = change(api, "fleet", set={"flags.banner": "while away"})
        assert view(api)["reported_version"] < away["version"]
        agent = start_agent(config, log)
        now = reported(api, away["version"])
        assert now["in_sync"] and now["pending_restart"] == []
        assert flags(port).json()["flags"] == {
            "banner": "while away",
            "greeting": "fleet",  # unset on the device: the fleet's value again
            "limit": 5,
        }
        assert now["sources"]["flags.greeting"] == "fleet"
    finally:
        agent.terminate()
        agent.wait(15)

    # A device the control plane first meets after the change gets the fleet's values
    # when it comes online; a config report that does not decode is counted as refused.
    newcomer = MqttLink(client_id=NEWCOMER, broker=broker.address, clean_start=True)
    inbox = Inbox()
    newcomer.subscribe(topics.down(NEWCOMER, topics.Down.CONFIG), inbox, qos=1)
    newcomer.start()
    try:
        assert newcomer.wait_subscribed(10)
        status = DeviceStatus(online=True, profile=PROFILE)
        newcomer.publish(topics.up(NEWCOMER, topics.Up.STATUS), status.to_bytes(), wait=10)
        got = wait_until(
            lambda: inbox.on(topics.down(NEWCOMER, topics.Down.CONFIG)), "the newcomer's config"
        )
        desired = decode_as(got[0], DesiredConfig)
        assert desired.values == {
            "flags.banner": "while away",
            "flags.greeting": "fleet",
            "telemetry.window_s": 30.0,
        }
        newcomer.publish(topics.up(NEWCOMER, topics.Up.CONFIG), b'{"type": "config_report"}')
        wait_until(
            lambda: api.get(f"/api/v1/devices/{NEWCOMER}").json()["rejected_messages"] == 1,
            "the bad config report to be counted",
        )
    finally:
        newcomer.stop()

    audit = api.get("/api/v1/audit", params={"action": "config.set"}).json()
    assert [entry["target"] for entry in reversed(audit)] == [
        "fleet",
        f"group:{GROUP}",
        f"device:{DEVICE}",
        f"device:{DEVICE}",
        f"device:{DEVICE}",
        f"device:{DEVICE}",
        "fleet",
    ]
    assert audit[1]["detail"]["set"] == {"flags.limit": 5}
    assert audit[1]["detail"]["unset"] == ["flags.greeting"]
