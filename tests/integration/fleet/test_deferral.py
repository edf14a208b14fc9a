"""Deferral with real agent processes: the update lock and the maintenance window.

An application on the device holds the update lock through the agent's local endpoint;
a rollout meanwhile downloads, verifies and stages, and the device reports
``deferred``: the old model keeps serving until the lock is released or expires, and
an agent restarted while deferred resumes the wait. A maintenance window opening
shortly after the offer switches the device when it opens, not before.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.tensors import decode_tensor, encode_tensor
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import build_bundle, provision_agent, register_model, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-defer0001"
TIMEOUT = 90.0


@dataclass
class Device:
    api: TestClient
    config: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.process = start_agent(self.config, self.log)

    def status(self) -> dict[str, Any] | None:
        """The restarted agent's ``status.json``, once it serves again; None before."""
        path = self.config.parent / "agent" / "status.json"
        try:
            status = json.loads(path.read_text())
            ready = httpx.get(f"{self.endpoint}/v2/health/ready", timeout=5).is_success
        except (OSError, ValueError, httpx.HTTPError):
            return None
        return status if ready and status.get("pid") == self.process.pid else None

    def lock(self, holder: str, ttl_s: float) -> dict[str, Any]:
        response = httpx.post(
            f"{self.endpoint}/v2/agent/update-lock",
            json={"holder": holder, "ttl_s": ttl_s},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def release(self, lock_id: str) -> None:
        response = httpx.delete(f"{self.endpoint}/v2/agent/update-lock/{lock_id}", timeout=10)
        assert response.status_code == 200, response.text

    def serving(self, x: np.ndarray) -> str:
        body = {"inputs": [encode_tensor("input", x.astype(np.float32))]}
        response = httpx.post(f"{self.endpoint}/v2/models/digits/infer", json=body, timeout=10)
        assert response.status_code == 200, response.text
        payload = response.json()
        dict(decode_tensor(o) for o in payload["outputs"])
        return str(payload["model_version"])

    def roll_out(self, bundle_id: str, **options: Any) -> int:
        response = self.api.post(
            "/api/v1/rollouts",
            json={"bundle_id": bundle_id, "device_ids": [DEVICE], "install_timeout_s": 600}
            | options,
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def row(self, rollout_id: int) -> dict[str, Any]:
        (row,) = self.api.get(f"/api/v1/rollouts/{rollout_id}").json()["devices"]
        return dict(row)

    def wait_state(self, rollout_id: int, state: str) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (r := self.row(rollout_id))["state"] == state and r,
                f"device {state} in rollout {rollout_id}",
                TIMEOUT,
            )
        )

    def install(self, bundle_id: str) -> None:
        self.wait_state(self.roll_out(bundle_id), "active")


@pytest.fixture
def device(tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel) -> Iterator[Device]:
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url)
    with serve(settings) as api:
        for version in ("1", "2", "3"):
            register_model(api, digits.onnx_bytes, digits.samples, version=version)
        config, port = provision_agent(
            tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
        )
        log = tmp_path / "agent.log"
        device = Device(api, config, port, log, start_agent(config, log))
        try:
            wait_until(
                lambda: (
                    (r := api.get(f"/api/v1/devices/{DEVICE}")).status_code == 200
                    and r.json()["online"]
                ),
                "the agent to come online",
            )
            device.install(build_bundle(api, "1", PROFILE)["id"])
            yield device
        finally:
            device.process.terminate()
            device.process.wait(15)


def test_an_app_holding_the_update_lock_defers_the_switch_until_it_lets_go(
    device: Device, digits: DigitsModel
) -> None:
    x = digits.holdout_x[:20]
    held = device.lock("robot-arm", ttl_s=600)
    rollout = device.roll_out(build_bundle(device.api, "2", PROFILE)["id"])
    row = device.wait_state(rollout, "deferred")
    assert row["reason"] == "update lock held by robot-arm"
    assert device.serving(x) == "1"  # staged, smoke-tested, not switched

    # Restarted while deferred: the journal resumes the wait; the lock outlives it too.
    device.restart()
    status = wait_until(device.status, "the restarted agent's status", TIMEOUT)
    assert status["journal_state"] == "deferred"
    assert status["deferred_reason"] == "update lock held by robot-arm"
    assert status["update_locks"] == ["robot-arm"]
    assert device.serving(x) == "1"
    assert device.row(rollout)["state"] == "deferred"

    device.release(held["lock_id"])
    device.wait_state(rollout, "active")
    assert device.serving(x) == "2"
    wait_until(
        lambda: device.api.get(f"/api/v1/rollouts/{rollout}").json()["state"] == "complete",
        "the rollout to complete",
        TIMEOUT,
    )


def test_an_expired_lock_lets_the_switch_proceed(device: Device, digits: DigitsModel) -> None:
    device.lock("crashed-app", ttl_s=8)  # and never renewed
    rollout = device.roll_out(build_bundle(device.api, "2", PROFILE)["id"])
    assert device.wait_state(rollout, "deferred")["reason"] == "update lock held by crashed-app"
    device.wait_state(rollout, "active")
    assert device.serving(digits.holdout_x[:5]) == "2"
    locks = httpx.get(f"{device.endpoint}/v2/agent/update-lock", timeout=5).json()
    assert locks == {"held": False, "locks": []}


def test_a_maintenance_window_opening_in_the_devices_zone_lets_it_switch(
    device: Device, digits: DigitsModel
) -> None:
    # A window opening at the first minute boundary at least 20 s away, in a zone with
    # a half-hour offset, so a window read in the wrong zone would not open.
    tz = ZoneInfo("Asia/Kolkata")
    opens = (datetime.now(UTC) + timedelta(seconds=80)).replace(second=0, microsecond=0)
    if (opens - datetime.now(UTC)).total_seconds() > 60 + 20:
        opens -= timedelta(minutes=1)
    local = opens.astimezone(tz)
    window = {"cron": f"{local.minute} {local.hour} * * *", "duration_s": 600,
              "tz": "Asia/Kolkata"}  # fmt: skip
    bundle = build_bundle(device.api, "2", PROFILE)
    rollout = device.roll_out(bundle["id"], maintenance_window=window)
    row = device.wait_state(rollout, "deferred")
    assert row["reason"] == f"outside maintenance window, next opens at {local.isoformat()}"
    assert datetime.now(UTC) < opens
    assert device.serving(digits.holdout_x[:5]) == "1"
    status = device.api.get(f"/api/v1/rollouts/{rollout}").json()
    assert status["maintenance_window"]["tz"] == "Asia/Kolkata"

    device.wait_state(rollout, "active")
    assert datetime.now(UTC) >= opens
    assert device.serving(digits.holdout_x[:5]) == "2"


def test_a_newer_rollout_takes_over_a_deferred_device_which_waits_again(
    device: Device, digits: DigitsModel
) -> None:
    held = device.lock("robot-arm", ttl_s=600)
    first = device.roll_out(build_bundle(device.api, "2", PROFILE)["id"])
    device.wait_state(first, "deferred")
    second = device.roll_out(build_bundle(device.api, "3", PROFILE)["id"])
    # The deferred install gives way to the newer offer, which stages and waits in turn.
    assert device.wait_state(second, "deferred")["reason"] == "update lock held by robot-arm"
    assert device.row(first)["state"] == "superseded"
    assert device.serving(digits.holdout_x[:5]) == "1"
    device.release(held["lock_id"])
    device.wait_state(second, "active")
    assert device.serving(digits.holdout_x[:5]) == "3"


def test_a_window_stored_with_the_devices_group_defers_its_switch(
    device: Device, digits: DigitsModel
) -> None:
    # The group's window opens in twelve hours: the rollout names none, so the group's
    # window travels with the offer and the device stages but does not switch.
    opens = (datetime.now(UTC) + timedelta(hours=12)).replace(second=0, microsecond=0)
    window = {"cron": f"{opens.minute} {opens.hour} * * *", "duration_s": 600, "tz": "UTC"}
    assert device.api.put("/api/v1/groups/line-a", json={"device_ids": [DEVICE]}).is_success
    stored = device.api.put("/api/v1/groups/line-a/window", json={"maintenance_window": window})
    assert stored.status_code == 200, stored.text
    assert stored.json()["maintenance_window"] == window

    rollout = device.roll_out(build_bundle(device.api, "2", PROFILE)["id"])

    row = device.wait_state(rollout, "deferred")
    assert row["reason"] == f"outside maintenance window, next opens at {opens.isoformat()}"
    assert row["maintenance_window"] == window  # shown in `rollout status --devices`
    assert device.serving(digits.holdout_x[:5]) == "1"
    refused = device.api.put(
        "/api/v1/groups/line-a/window", json={"maintenance_window": {"cron": "61 * * * *"}}
    )
    assert refused.status_code == 422  # a window no device could read is refused
