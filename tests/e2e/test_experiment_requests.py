"""An A/B experiment that splits each device's requests, against real processes.

A real Mosquitto, the control plane app and two ``edgefleet-agent`` OS processes running
digits v1. The experiment (``requests`` mode) delivers v2 to both as a challenger beside
v1; the test plays the application on each device: it asks for answers and posts the
outcome it measured for each through ``POST /v2/models/digits/outcome`` with the
answer's id. Answers from arm B lead to worse outcomes. The control plane's scheduled
pass reads the per-arm windows of the same two devices, decides for A, ends the
challenger, and writes its numbers to the audit log.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.tensors import encode_tensor
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import build_bundle, provision_agent, register_model, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e

PROFILE = "x86-64-gateway-onnx"
DEVICES = ("dev-abreq00001", "dev-abreq00002")
AGENT_EXTRA = "[telemetry]\nwindow_s = 0.3\n[probation]\nseconds = 0\n"
OUTCOME = {"A": 1.0, "B": 0.6}  # the application's mean outcome after each arm's answer


@dataclass
class Fleet:
    api: TestClient
    ports: dict[str, int]
    data_dirs: dict[str, Path]
    bundles: dict[str, str]
    body: dict[str, Any]

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.get(f"/api/v1{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def infer(self, http: httpx.Client, device: str, request_id: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.ports[device]}/v2/models/digits/infer"
        response = http.post(url, json={**self.body, "id": request_id})
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, digits: DigitsModel) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("abreq")
    tmp.chmod(0o711)
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    processes: list[subprocess.Popen[bytes]] = []
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("EDGEFLEET_API_AUTH", "false")  # module scope: the autouse fixture is not
        settings = Settings(data_dir=tmp / "cp", broker_url=broker.url, rollout_tick_s=0.3)
        with serve(settings) as api:
            bundles = {}
            for version in ("1", "2"):
                register_model(api, digits.onnx_bytes, digits.samples, version=version)
                bundles[version] = build_bundle(api, version, PROFILE)["id"]
            ports, data_dirs = {}, {}
            for device in DEVICES:
                home = tmp / device
                home.mkdir()
                config, ports[device] = provision_agent(
                    home, api, broker=broker.url, device_id=device, profile=PROFILE,
                    extra=AGENT_EXTRA,
                )  # fmt: skip
                data_dirs[device] = home / "agent"
                processes.append(start_agent(config, home / "agent.log"))
            for device in DEVICES:
                wait_until(
                    lambda d=device: api.get(f"/api/v1/devices/{d}").status_code == 200,
                    f"{device}'s status",
                )
            response = api.post(
                "/api/v1/rollouts", json={"bundle_id": bundles["1"], "device_ids": list(DEVICES)}
            )
            assert response.status_code == 201, response.text
            rollout = f"/api/v1/rollouts/{response.json()['id']}"
            wait_until(lambda: api.get(rollout).json()["state"] == "complete", "v1 active on both")
            body = {"inputs": [encode_tensor("input", digits.holdout_x[:1].astype(np.float32))]}
            yield Fleet(api, ports, data_dirs, bundles, body)
    finally:
        patch.undo()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(20)
        broker.kill()


def create_experiment(fleet: Fleet, name: str) -> dict[str, Any]:
    response = fleet.api.post(
        "/api/v1/experiments",
        json={
            "name": name,
            "bundle_a": fleet.bundles["1"],
            "bundle_b": fleet.bundles["2"],
            "selector": {"device_ids": list(DEVICES)},
            "mode": "requests",
            "share_b": 0.5,
            "metric": "outcome",
            "outcome_goal": "maximize",
            "min_samples": 60,
        },
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def play_application(
    fleet: Fleet, http: httpx.Client, experiment_id: int, outcome: dict[str, float], seed: int
) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """Ask both devices for answers and post each answer's outcome (mean ``outcome[arm]``)
    until the experiment has decided; the experiment, and the versions each device served."""
    rng = np.random.default_rng(seed)
    served: dict[str, set[str]] = {d: set() for d in DEVICES}
    sent = {"n": 0}

    def challenger_answering() -> bool:
        answers = [fleet.infer(http, d, f"probe-{seed}-{d}") for d in DEVICES]
        return all("parameters" in a for a in answers)

    wait_until(challenger_answering, "the challenger beside v1 on both devices")

    def decided() -> dict[str, Any] | None:
        for device in DEVICES:
            for _ in range(20):
                sent["n"] += 1
                answer = fleet.infer(http, device, f"{seed}-{device}-{sent['n']}")
                served[device].add(answer["model_version"])
                if "parameters" not in answer:
                    continue  # the experiment ended between two requests
                arm = answer["parameters"]["arm"]
                url = f"http://127.0.0.1:{fleet.ports[device]}/v2/models/digits/outcome"
                value = float(rng.normal(outcome[arm], 0.3))
                posted = http.post(url, json={"value": value, "id": answer["id"]})
                # Counted for the arm that answered (tests/unit/agent/test_split.py), or
                # for the active model once the decision has dropped the challenger.
                assert posted.status_code == 200, posted.text
        current = fleet.get(f"/experiments/{experiment_id}")
        return current if current["state"] != "running" else None

    return dict(wait_until(decided, "the experiment to decide", timeout=120)), served


def audit_of(fleet: Fleet, experiment_id: int, action: str) -> dict[str, Any]:
    (entry,) = [
        e
        for e in fleet.get("/audit", action=action)
        if e["target"] == f"experiment:{experiment_id}"
    ]
    return dict(entry)


def active_bundle(fleet: Fleet, device: str) -> str:
    active = fleet.data_dirs[device] / "models" / "digits" / "active.json"
    return str(json.loads(active.read_text())["bundle_id"])


def test_a_challenger_with_worse_outcomes_on_a_share_of_requests_loses_and_is_dropped(
    fleet: Fleet,
) -> None:
    experiment = create_experiment(fleet, "digits-v2-worse")
    assert {a["arm"]: a["devices"] for a in experiment["arms"]} == {
        "A": list(DEVICES),
        "B": list(DEVICES),
    }
    with httpx.Client(timeout=10) as http:
        result, served = play_application(fleet, http, experiment["id"], {"A": 1.0, "B": 0.6}, 19)

        assert result["state"] == "promoted" and result["winner"] == "A", result["reason"]
        # Both arms answered on each device: the split is per request, not per device.
        assert all(versions == {"1", "2"} for versions in served.values())
        # After the decision the challenger is gone and v1 answers everything.
        wait_until(
            lambda: all("parameters" not in fleet.infer(http, d, "after") for d in DEVICES),
            "the challenger dropped on both devices",
        )
    outcome = result["results"]["outcome"]
    assert outcome["significant"] and outcome["mean_a"] > outcome["mean_b"]
    assert outcome["n_a"] >= 60 and outcome["n_b"] >= 60
    assert outcome["devices"] == {"A": 2, "B": 2}  # the same two devices on both arms
    for device in DEVICES:
        assert active_bundle(fleet, device) == fleet.bundles["1"]
        wait_until(lambda d=device: not (fleet.data_dirs[d] / "shadow").exists(), "shadow gone")

    decision = audit_of(fleet, experiment["id"], "experiment.decide")
    assert decision["detail"]["winner"] == "A"
    numbers = decision["detail"]["results"]["outcome"]
    assert numbers["likelihood_ratio"] >= 1 / numbers["alpha"]
    assert f"A {numbers['mean_a']:.4g}" in decision["reason"]
    promotion = audit_of(fleet, experiment["id"], "experiment.promote")
    assert promotion["detail"]["ended_challenger_rollouts"]
    assert promotion["detail"]["devices"] == 0  # the cohort already runs A


def test_a_challenger_with_better_outcomes_wins_and_the_cohort_switches_to_it(
    fleet: Fleet,
) -> None:
    assert all(active_bundle(fleet, d) == fleet.bundles["1"] for d in DEVICES)
    experiment = create_experiment(fleet, "digits-v2-better")
    with httpx.Client(timeout=10) as http:
        result, _ = play_application(fleet, http, experiment["id"], {"A": 0.6, "B": 1.0}, 20)
        assert result["state"] == "promoted" and result["winner"] == "B", result["reason"]
        wait_until(
            lambda: all(fleet.infer(http, d, "after")["model_version"] == "2" for d in DEVICES),
            "v2 active on both devices",
        )
    assert all(active_bundle(fleet, d) == fleet.bundles["2"] for d in DEVICES)
    promotion = audit_of(fleet, experiment["id"], "experiment.promote")
    assert promotion["detail"]["devices"] == len(DEVICES)
    rollout = fleet.get(f"/rollouts/{promotion['detail']['rollout_id']}")
    assert rollout["bundle_id"] == fleet.bundles["2"]
