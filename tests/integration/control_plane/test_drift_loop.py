"""The drift loop in the control plane: drift verdict -> retraining -> gates -> canary.

Devices are MQTT sessions that report status and drift windows over a real broker;
the retraining hook is the real digits command, the new version is really
registered, built, signed, compared and rolled out.
"""

from __future__ import annotations

import io
import json
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import DeviceStatus, TelemetryEvent
from edgefleet.mqtt import Incoming, MqttLink
from edgefleet_demo.digits import DigitsModel, load_split
from edgefleet_demo.retrain_digits import shift_digits
from tests.support.control_plane import serve
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration
PROFILE = "x86-64-gateway-onnx"
DEVICES = ["dev-loop00001", "dev-loop00002", "dev-loop00003"]
REPO = Path(__file__).resolve().parents[3]
RETRAIN = [sys.executable, "-m", "edgefleet_demo.retrain_digits"]
HOOKS = {
    # What an admin defines; the hook inherits no environment, so PYTHONPATH is explicit.
    "digits": {"command": [*RETRAIN, "--shift", "6"], "env": {"PYTHONPATH": str(REPO)}},
    "digits-unshifted": {"command": [*RETRAIN, "--shift", "0"], "env": {"PYTHONPATH": str(REPO)}},
    "offline": {
        "command": [sys.executable, "-c", "import sys; print('trainer offline'); sys.exit(1)"]
    },
}


class Loop:
    def __init__(self, api: TestClient, app: Any, broker: MosquittoBroker) -> None:
        self.api, self.app, self.broker = api, app, broker
        self.offers: queue.Queue[Incoming] = queue.Queue()
        self.links: dict[str, MqttLink] = {}

    def start_devices(self, bundle: dict[str, Any]) -> None:
        for device_id in DEVICES:
            link = MqttLink(client_id=device_id, broker=self.broker.address, clean_start=True)
            link.subscribe(topics.down(device_id, topics.Down.OFFER), self.offers.put)
            link.start()
            assert link.wait_connected(10)
            status = DeviceStatus(
                online=True,
                profile=PROFILE,
                model="digits",
                model_version="1",
                bundle_id=bundle["id"],
                release=bundle["release"],
            )
            link.publish(topics.up(device_id, topics.Up.STATUS), status.to_bytes(), retain=True)
            self.links[device_id] = link
        wait_until(
            lambda: len([d for d in self.api.get("/api/v1/devices").json() if d["online"]]) == 3,
            "three devices online",
        )

    def report_drift(self, bundle: dict[str, Any], drifted: dict[str, bool], windows: int) -> None:
        t0 = time.time() - 3600
        for device_id, is_drifted in drifted.items():
            for i in range(windows):
                event = TelemetryEvent(
                    kind="drift",
                    bundle_id=bundle["id"],
                    release=bundle["release"],
                    ts=t0 + i * 60,
                    data={"drifted": is_drifted, "share_drifted": 0.6 if is_drifted else 0.0},
                )
                self.links[device_id].publish(
                    topics.up(device_id, topics.Up.TELEMETRY), event.to_bytes(), wait=10
                )
        expected = windows * len(drifted)
        wait_until(
            lambda: len(self.api.get("/api/v1/drift/series").json()) >= expected,
            "drift windows stored",
        )

    def report_field_sample(
        self, bundle: dict[str, Any], device_id: str, x: np.ndarray, y: np.ndarray
    ) -> None:
        """A drifted window's labelled rows, as an agent uploads them (``sample``)."""
        event = TelemetryEvent(
            kind="sample",
            bundle_id=bundle["id"],
            release=bundle["release"],
            ts=time.time() - 60,
            data={
                "model": "digits",
                "model_version": bundle["model_version"],
                "input": "x",
                "inputs": x.tolist(),
                "outputs": [None] * len(x),
                "labels": y.tolist(),
                "drifted": True,
                "withheld_rows": 0,
            },
        )
        self.links[device_id].publish(
            topics.up(device_id, topics.Up.TELEMETRY), event.to_bytes(), wait=10
        )
        wait_until(
            lambda: self.api.get("/api/v1/models/digits/field-data").json(),
            "the field sample stored",
        )

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()


@pytest.fixture
def loop(
    tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel
) -> Iterator[tuple[Loop, dict[str, Any]]]:
    model = digits
    settings = Settings(
        data_dir=tmp_path / "cp",
        broker_url=broker.url,
        retraining_hooks=HOOKS,  # type: ignore[arg-type]
    )
    with serve(settings) as api:
        app = api.app
        samples = io.BytesIO()
        np.save(samples, model.samples, allow_pickle=False)
        assert (
            api.post(
                "/api/v1/models",
                data={"name": "digits", "version": "1"},
                files={
                    "model": ("m.onnx", model.onnx_bytes),
                    "samples": ("s.npy", samples.getvalue()),
                },
            ).status_code
            == 201
        )
        bundle = api.post(
            "/api/v1/bundles", json={"model": "digits", "version": "1", "profile": PROFILE}
        ).json()
        harness = Loop(api, app, broker)
        harness.start_devices(bundle)
        try:
            yield harness, bundle
        finally:
            harness.stop()


def set_policy(api: TestClient, **fields: Any) -> None:
    body = {"hook": "digits", **fields}
    response = api.patch("/api/v1/policies/digits", json=body)
    assert response.status_code == 200, response.text


def test_fleet_drift_retrains_on_field_data_builds_compares_and_starts_a_canary_by_itself(
    loop: tuple[Loop, dict[str, Any]],
) -> None:
    harness, bundle = loop
    set_policy(harness.api, retrain="automatic")
    harness.report_drift(bundle, {DEVICES[0]: True, DEVICES[1]: True, DEVICES[2]: False}, windows=3)
    # What a drifted device saw, labelled later: the brighter sensor's digits (rows the
    # comparison's original holdout does not hold).
    train_x, train_y, *_ = load_split()
    field_x = shift_digits(train_x[:120], 6.0)
    harness.report_field_sample(bundle, DEVICES[0], field_x, train_y[:120])
    harness.app.state.drift_loop.tick()

    (request,) = harness.api.get("/api/v1/retraining").json()
    assert request["state"] == "rolled_out", request["reason"]
    assert request["detail"]["field_data"] == {"rows": 120, "labelled_rows": 120, "devices": 1}
    assert "retrained digits on 120 labelled field rows" in request["detail"]["hook_output"]
    assert request["trigger"] == "drift"
    assert request["detail"]["trigger_reason"].startswith("drift: 2 of 3 devices (67%)")
    assert request["detail"]["devices_drifted"] == DEVICES[:2]
    assert request["new_version"] == "2"
    assert request["detail"]["challenger_accuracy"] > request["detail"]["champion_accuracy"]
    assert request["detail"]["hook"] == "digits"
    versions = {m["version"] for m in harness.api.get("/api/v1/models").json()}
    assert versions == {"1", "2"}
    rollout = harness.api.get(f"/api/v1/rollouts/{request['rollout_id']}").json()
    new_bundle = harness.api.get(f"/api/v1/bundles/{rollout['bundle_id']}").json()
    assert new_bundle["model_version"] == "2"
    assert new_bundle["release"] > bundle["release"]
    offered = {json.loads(harness.offers.get(timeout=10).payload)["bundle_id"]}
    assert offered == {new_bundle["id"]}


def test_one_drifting_device_triggers_nothing(loop: tuple[Loop, dict[str, Any]]) -> None:
    harness, bundle = loop
    set_policy(harness.api, retrain="automatic")
    harness.report_drift(bundle, {DEVICES[0]: True, DEVICES[1]: False}, windows=4)
    harness.app.state.drift_loop.tick()
    assert harness.api.get("/api/v1/retraining").json() == []
    (verdict,) = harness.api.get("/api/v1/drift/status").json()
    assert verdict["devices_drifted"] == [DEVICES[0]] and verdict["fires"] is False


def test_approval_policy_waits_for_a_person_then_runs(
    loop: tuple[Loop, dict[str, Any]],
) -> None:
    harness, bundle = loop
    set_policy(harness.api, retrain="approval")
    harness.report_drift(bundle, {DEVICES[0]: True, DEVICES[1]: True}, windows=3)
    harness.app.state.drift_loop.tick()
    (request,) = harness.api.get("/api/v1/retraining").json()
    assert request["state"] == "pending_approval"
    assert harness.api.get("/api/v1/models").json()[-1]["version"] == "1"  # nothing ran

    approved = harness.api.post(f"/api/v1/retraining/{request['id']}/approve")
    assert approved.json()["decided_by"] == "auth-disabled"  # the caller's token names who
    (entry,) = harness.api.get("/api/v1/audit", params={"action": "retraining.approve"}).json()
    assert entry["target"] == f"request {request['id']}"
    harness.app.state.drift_loop.tick()
    done = harness.api.get(f"/api/v1/retraining/{request['id']}").json()
    assert done["state"] == "rolled_out"
    again = harness.api.post(f"/api/v1/retraining/{request['id']}/approve", json={})
    assert again.status_code == 422


def test_challenger_that_does_not_beat_the_champion_is_rejected(
    loop: tuple[Loop, dict[str, Any]],
) -> None:
    harness, bundle = loop
    # Retrains on nothing new.
    set_policy(harness.api, retrain="automatic", hook="digits-unshifted", comparison_margin=0.05)
    harness.report_drift(bundle, {DEVICES[0]: True, DEVICES[1]: True}, windows=3)
    harness.app.state.drift_loop.tick()
    (request,) = harness.api.get("/api/v1/retraining").json()
    assert request["state"] == "rejected"
    assert "challenger loses" in request["reason"]
    assert request["rollout_id"] is None


def test_failing_hook_fails_the_request_with_its_output(
    loop: tuple[Loop, dict[str, Any]],
) -> None:
    harness, bundle = loop
    set_policy(harness.api, retrain="automatic", hook="offline")
    harness.report_drift(bundle, {DEVICES[0]: True, DEVICES[1]: True}, windows=3)
    harness.app.state.drift_loop.tick()
    (request,) = harness.api.get("/api/v1/retraining").json()
    assert request["state"] == "failed"
    assert "trainer offline" in request["reason"]
    assert request["detail"]["hook"] == "offline"
    assert request["detail"]["hook_exit_code"] == 1
    assert request["detail"]["hook_output"].strip() == "trainer offline"


def test_policy_for_unknown_model_or_with_typo_is_refused(
    loop: tuple[Loop, dict[str, Any]],
) -> None:
    harness, _bundle = loop
    assert harness.api.patch("/api/v1/policies/nomodel", json={}).status_code == 404
    typo = harness.api.patch("/api/v1/policies/digits", json={"retrian": "off"})
    assert typo.status_code == 422
