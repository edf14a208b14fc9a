"""Several models on one agent, and hot swaps under load, against real processes.

One real ``edgefleet-agent`` process hosts two models (``digits`` and ``classifier``)
for the whole module, behind a real Mosquitto and the control plane app; client
threads keep requests flowing through every switch. Failures are counted, never timed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.hot_swap import SteadyLoad, failed, infer_body, served_version
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import DeviceCommand
from edgefleet_demo.digits import DigitsModel
from tests.support.harness import (
    build_bundle,
    provision_agent,
    register_model,
    roll_out,
    start_agent,
    stop_agent,
)
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-multimodel01"
MODELS = "[models.digits]\nmemory_share = 0.5\n[models.classifier]\nmemory_share = 0.5\n"


@dataclass
class TwoModelRig:
    api: TestClient
    app: Any
    data_dir: Path
    port: int
    body: bytes
    bundles: dict[str, dict[str, Any]]
    process: subprocess.Popen[bytes]

    def models(self) -> dict[str, str]:
        """``GET /v2/models``: name -> version served."""
        listed = httpx.get(f"http://127.0.0.1:{self.port}/v2/models", timeout=10).json()
        return {m["name"]: m["version"] for m in listed["models"]}

    def load(self, model: str, threads: int) -> SteadyLoad:
        load = SteadyLoad(self.port, model, self.body, rate=60.0 * threads, threads=threads)
        load.start()
        return load

    def state_of(self, model: str) -> dict[str, str]:
        """Every file under ``models/<model>/`` with its SHA-256 (what a rollout of
        another model must leave alone)."""
        root = self.data_dir / "models" / model
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, digits: DigitsModel) -> Iterator[TwoModelRig]:
    tmp = tmp_path_factory.mktemp("multimodel")
    tmp.chmod(0o711)
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    process = None
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("EDGEFLEET_API_AUTH", "false")
            app = create_app(Settings(data_dir=tmp / "cp", broker_url=broker.url))
            with TestClient(app) as api:
                bundles = {}
                for name, version in [("digits", "1"), ("digits", "2"), ("classifier", "1"),
                                      ("intruder", "1")]:  # fmt: skip
                    register_model(
                        api, digits.onnx_bytes, digits.samples, version=version, name=name
                    )
                    bundles[f"{name}-{version}"] = build_bundle(api, version, PROFILE, model=name)
                config, port = provision_agent(
                    tmp,
                    api,
                    broker=broker.url,
                    device_id=DEVICE,
                    profile=PROFILE,
                    extra=f"{MODELS}[probation]\nseconds = 0\n",
                )
                process = start_agent(config, tmp / "agent.log")
                wait_until(
                    lambda: api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
                    "the agent's status",
                )
                for key in ("digits-1", "classifier-1"):
                    assert roll_out(api, bundles[key]["id"], DEVICE)["state"] == "complete"
                yield TwoModelRig(
                    api=api,
                    app=app,
                    data_dir=tmp / "agent",
                    port=port,
                    body=infer_body(digits.holdout_x[:1]),
                    bundles=bundles,
                    process=process,
                )
    finally:
        stop_agent(process)
        broker.kill()


def test_rollout_of_one_model_switches_it_under_load_and_leaves_the_other_untouched(
    rig: TwoModelRig,
) -> None:
    assert rig.models() == {"digits": "1", "classifier": "1"}
    classifier_before = rig.state_of("classifier")
    digits_load, classifier_load = rig.load("digits", threads=2), rig.load("classifier", 1)
    try:
        rollout = roll_out(rig.api, rig.bundles["digits-2"]["id"], DEVICE)
        wait_until(lambda: served_version(rig.port, "digits", rig.body) == "2", "v2 to answer")
    finally:
        on_digits, on_classifier = digits_load.stop(), classifier_load.stop()

    assert rollout["state"] == "complete"
    # Every request was answered, through the switch; the new version took over.
    assert on_digits and failed(on_digits) == []
    assert {s.version for s in on_digits} == {"1", "2"}
    # The other model kept serving its own version, and its files were not touched.
    assert on_classifier and failed(on_classifier) == []
    assert {s.version for s in on_classifier} == {"1"}
    assert rig.state_of("classifier") == classifier_before
    assert rig.models() == {"digits": "2", "classifier": "1"}
    # The device's status, as the control plane keeps it, lists both models.
    device = rig.api.get(f"/api/v1/devices/{DEVICE}").json()
    served = {m["name"]: m["bundle_id"] for m in device["models"]}
    assert served == {
        "digits": rig.bundles["digits-2"]["id"],
        "classifier": rig.bundles["classifier-1"]["id"],
    }


def test_rollback_command_under_load_fails_no_request(rig: TwoModelRig) -> None:
    new = rig.bundles["digits-2"]["id"]
    assert roll_out(rig.api, new, DEVICE)["state"] == "complete"  # (already, if run in order)
    classifier_active = (rig.data_dir / "models" / "classifier" / "active.json").read_bytes()
    load = rig.load("digits", threads=3)
    try:
        rig.app.state.link.publish_command(
            DEVICE, DeviceCommand(command="rollback", bundle_id=new, reason="bench")
        )
        wait_until(lambda: served_version(rig.port, "digits", rig.body) == "1", "v1 again")
    finally:
        samples = load.stop()

    assert samples and failed(samples) == []
    assert {s.version for s in samples} == {"1", "2"}
    assert (rig.data_dir / "models" / "classifier" / "active.json").read_bytes() == (
        classifier_active
    )
    active = json.loads((rig.data_dir / "models" / "digits" / "active.json").read_text())
    assert active["bundle_id"] == rig.bundles["digits-1"]["id"]


def test_bundle_of_a_model_not_on_the_allow_list_is_refused_before_download(
    rig: TwoModelRig,
) -> None:
    rollout = roll_out(rig.api, rig.bundles["intruder-1"]["id"], DEVICE)
    assert rollout["state"] != "complete"
    (device,) = rollout["devices"]
    assert device["state"] == "failed"
    assert "'intruder' is not allowed on this device" in device["reason"]
    assert not (rig.data_dir / "models" / "intruder" / "slots").exists()
    assert set(rig.models()) == {"digits", "classifier"}
