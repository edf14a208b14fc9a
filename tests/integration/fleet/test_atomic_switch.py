"""The fleet-wide atomic switch with three real agent processes over a real Mosquitto.

The devices stage and report ``armed``; once all are armed the control plane signs a
switch order (a TUF target) for a moment a few seconds ahead and every device switches
at it, reporting when (the rollout shows the skew). A device that refuses the bundle
means nobody switches: the others drop what they staged. A device killed after staging
comes back after the moment, switches on return (the order is still valid) and its
lateness is reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.cli.rollouts import _rollout_table
from edgefleet.control_plane.core.settings import Settings
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import build_bundle, provision_agent, register_model, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"
DEVICES = ("dev-atomic0001", "dev-atomic0002", "dev-atomic0003")
TIMEOUT = 120.0
ONLY_DIGITS = "\n[models.digits]\nmemory_share = 1.0\n"  # the third device hosts digits only


@dataclass
class Agent:
    device_id: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes]


@dataclass
class Fleet:
    api: TestClient
    agents: list[Agent]

    def roll_out(self, bundle_id: str, **atomic: Any) -> int:
        body = {
            "bundle_id": bundle_id,
            "device_ids": list(DEVICES),
            "atomic": {"switch_lead_s": 5} | atomic,
        }
        response = self.api.post("/api/v1/rollouts", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/rollouts/{rollout_id}").json())

    def ended(self, rollout_id: int) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (r := self.rollout(rollout_id))["state"] != "in_progress" and r,
                f"rollout {rollout_id} to end",
                TIMEOUT,
            )
        )

    def row(self, rollout_id: int, device_id: str) -> dict[str, Any]:
        rows = self.rollout(rollout_id)["devices"]
        return dict(next(r for r in rows if r["device_id"] == device_id))

    def serving(self, device_id: str) -> list[tuple[str | None, str | None]]:
        models = self.api.get(f"/api/v1/devices/{device_id}").json().get("models") or []
        return sorted((m.get("name"), m.get("version")) for m in models)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, digits: DigitsModel) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("atomic")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    previous = os.environ.get("EDGEFLEET_API_AUTH")
    os.environ["EDGEFLEET_API_AUTH"] = "false"  # (module scope: monkeypatch is per test)
    agents: list[Agent] = []
    try:
        with serve(Settings(data_dir=tmp / "cp", broker_url=broker.url)) as api:
            for version in ("1", "2"):
                register_model(api, digits.onnx_bytes, digits.samples, version=version)
            register_model(api, digits.onnx_bytes, digits.samples, version="1", name="sensor")
            for index, device_id in enumerate(DEVICES):
                home = tmp / device_id
                home.mkdir()
                config, _port = provision_agent(
                    home, api, broker=broker.url, device_id=device_id, profile=PROFILE,
                    extra=ONLY_DIGITS if index == 2 else "",
                )  # fmt: skip
                log = home / "agent.log"
                agents.append(Agent(device_id, config, log, start_agent(config, log)))
            for device_id in DEVICES:
                wait_until(
                    lambda d=device_id: api.get(f"/api/v1/devices/{d}").json().get("online"),
                    f"{device_id} online",
                    TIMEOUT,
                )
            yield Fleet(api, agents)
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                agent.process.terminate()
                agent.process.wait(15)
        if previous is None:
            os.environ.pop("EDGEFLEET_API_AUTH", None)
        else:
            os.environ["EDGEFLEET_API_AUTH"] = previous
        broker.kill()


def test_every_device_stages_then_all_switch_at_the_signed_moment(fleet: Fleet) -> None:
    bundle = build_bundle(fleet.api, "1", PROFILE)
    rollout_id = fleet.roll_out(bundle["id"])

    rollout = fleet.ended(rollout_id)

    assert rollout["state"] == "complete", rollout["reason"]
    order = rollout["switch_order"]
    assert order["state"] == "issued" and sorted(order["armed"]) == list(DEVICES)
    switched = [d["switched_at"] for d in rollout["devices"]]
    assert all(d["state"] == "active" for d in rollout["devices"])
    # Nobody switched before the signed moment; the skew shown is the spread of the reports.
    assert min(switched) >= order["switch_at"]
    assert rollout["switch_skew_s"] == pytest.approx(max(switched) - min(switched))
    console = Console(record=True, width=250)
    console.print(_rollout_table(rollout))
    assert "switch skew" in " ".join(console.export_text().split())
    audit = fleet.api.get("/api/v1/audit", params={"rollout_id": rollout_id}).json()
    assert "rollout.switch_order" in [a["action"] for a in audit]


def test_a_device_that_cannot_stage_means_nobody_switches(fleet: Fleet) -> None:
    bundle = build_bundle(fleet.api, "1", PROFILE, model="sensor")  # not allowed on the third
    rollout_id = fleet.roll_out(bundle["id"])

    rollout = fleet.ended(rollout_id)

    assert rollout["state"] == "failed"
    assert f"staging failed on {DEVICES[2]}" in rollout["reason"]
    assert "not allowed on this device" in rollout["reason"]
    assert rollout["switch_order"] is None
    for device_id in DEVICES[:2]:
        row = wait_until(
            lambda d=device_id: (r := fleet.row(rollout_id, d))["state"] == "failed" and r,
            f"{device_id} to drop its staged bundle",
            TIMEOUT,
        )
        assert row["reason"].startswith("staged bundle dropped: atomic switch off")
        assert row["switched_at"] is None
        assert ("sensor", "1") not in fleet.serving(device_id)


def test_a_device_away_past_the_moment_switches_on_return_and_is_reported_late(
    fleet: Fleet,
) -> None:
    away = fleet.agents[2]
    bundle = build_bundle(fleet.api, "2", PROFILE)
    rollout_id = fleet.roll_out(bundle["id"], switch_lead_s=3, late_switch_s=600)
    wait_until(lambda: fleet.row(rollout_id, away.device_id)["state"] == "armed",
               "the third device armed", TIMEOUT)  # fmt: skip
    away.process.send_signal(signal.SIGKILL)  # a power cut after staging
    away.process.wait(15)
    order = wait_until(lambda: fleet.rollout(rollout_id)["switch_order"], "the order", TIMEOUT)
    for device_id in DEVICES[:2]:
        wait_until(lambda d=device_id: fleet.row(rollout_id, d)["state"] == "active",
                   f"{device_id} switched", TIMEOUT)  # fmt: skip
    wait_until(lambda: fleet.rollout(rollout_id)["phase"] == "waiting_offline",
               "the rollout to wait for the device away", TIMEOUT)  # fmt: skip
    assert fleet.row(rollout_id, away.device_id)["state"] == "armed"  # survived the kill

    away.process = start_agent(away.config, away.log)
    rollout = fleet.ended(rollout_id)

    assert rollout["state"] == "complete", rollout["reason"]
    late = fleet.row(rollout_id, away.device_id)
    assert late["state"] == "active"
    assert late["switched_at"] > order["switch_at"] and late["switch_late_s"] > 0
    on_time = [fleet.row(rollout_id, d)["switched_at"] for d in DEVICES[:2]]
    assert rollout["switch_skew_s"] == pytest.approx(max(on_time) - min(on_time))
    console = Console(record=True, width=250)
    console.print(_rollout_table(rollout))
    assert f"late: {away.device_id} +" in " ".join(console.export_text().split())
