"""Bundles from the real control plane to a real agent process, good and bad.

Every test runs a private Mosquitto, the control-plane app (its lifespan starts the
signed repository and the fleet link) and one ``edgefleet-agent`` OS process. A bad
bundle must be refused with its reason reported, and the agent must keep serving
the model it had.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import BundleOffer
from edgefleet.mqtt import MqttLink
from edgefleet.tensors import decode_tensor, encode_tensor
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import (
    build_bundle,
    provision_agent,
    register_model,
    roll_out,
    start_agent,
)
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-install001"
TIMEOUT = 60.0


@dataclass
class Fleet:
    api: TestClient
    app: Any
    broker: MosquittoBroker
    agent_port: int
    agent_log: Path

    def build(self, version: str) -> dict[str, Any]:
        return build_bundle(self.api, version, PROFILE)

    def roll_out(self, bundle_id: str) -> dict[str, Any]:
        return roll_out(self.api, bundle_id, DEVICE)

    def device(self) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/devices/{DEVICE}").json())

    def infer(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        body = {"inputs": [encode_tensor("input", x.astype(np.float32))]}
        response = httpx.post(
            f"http://127.0.0.1:{self.agent_port}/v2/models/digits/infer", json=body, timeout=10
        )
        assert response.status_code == 200, response.text
        payload = response.json()
        outputs = dict(decode_tensor(o) for o in payload["outputs"])
        return str(payload["model_version"]), outputs["label"]


@pytest.fixture
def fleet(tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel) -> Iterator[Fleet]:
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url)
    with serve(settings) as api:
        app = api.app
        for version in ("1", "2"):
            register_model(api, digits.onnx_bytes, digits.samples, version=version)
        config, port = provision_agent(
            tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
        )
        log = tmp_path / "agent.log"
        agent = start_agent(config, log)
        try:
            fleet = Fleet(api=api, app=app, broker=broker, agent_port=port, agent_log=log)
            wait_until(
                lambda: (
                    api.get(f"/api/v1/devices/{DEVICE}").status_code == 200
                    and fleet.device()["online"]
                ),
                "the agent to come online",
            )
            yield fleet
        finally:
            agent.terminate()
            agent.wait(15)


@pytest.fixture
def reports(broker: MosquittoBroker) -> Iterator[list[dict[str, Any]]]:
    """Every install report the test device publishes, as seen by an observer."""
    seen: list[dict[str, Any]] = []
    watcher = MqttLink(client_id="cp-watcher01", broker=broker.address, clean_start=True)
    watcher.subscribe(
        topics.up(DEVICE, topics.Up.REPORT), lambda m: seen.append(json.loads(m.payload))
    )
    watcher.start()
    assert watcher.wait_connected(10)
    yield seen
    watcher.stop()


def tamper_target(app: Any, bundle: dict[str, Any]) -> None:
    """Flip one byte of the bundle file the repository serves (an attacker on the store)."""
    targets_dir = app.state.settings.repository_dir / "targets"
    (path,) = targets_dir.glob(f"{bundle['sha256']}.*")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_agent_installs_signed_bundle_and_reports_its_version(
    fleet: Fleet, digits: DigitsModel
) -> None:
    bundle = fleet.build("1")
    rollout = fleet.roll_out(bundle["id"])
    assert rollout["state"] == "complete"
    assert rollout["devices"][0]["state"] == "active"
    assert rollout["devices"][0]["install_seconds"] > 0
    device = wait_until(
        lambda: fleet.device() if fleet.device()["bundle_id"] == bundle["id"] else None,
        "the device's status to name the bundle",
    )
    assert device["release"] == bundle["release"]
    version, labels = fleet.infer(digits.holdout_x)
    assert version == "1"
    assert float(np.mean(labels == digits.holdout_y)) >= 0.9


def test_tampered_bundle_is_refused_and_the_current_model_keeps_serving(
    fleet: Fleet, digits: DigitsModel
) -> None:
    good = fleet.build("1")
    assert fleet.roll_out(good["id"])["state"] == "complete"
    bad = fleet.build("2")
    tamper_target(fleet.app, bad)
    rollout = fleet.roll_out(bad["id"])
    assert rollout["state"] == "failed"
    reason = rollout["devices"][0]["reason"]
    assert "hash" in reason.lower() or "sha256" in reason.lower(), reason
    assert fleet.device()["bundle_id"] == good["id"]
    version, labels = fleet.infer(digits.holdout_x[:50])
    assert version == "1"
    assert float(np.mean(labels == digits.holdout_y[:50])) >= 0.9


def test_older_release_is_refused_after_a_newer_one_is_installed(fleet: Fleet) -> None:
    older = fleet.build("1")
    newer = fleet.build("2")
    assert fleet.roll_out(newer["id"])["state"] == "complete"
    rollout = fleet.roll_out(older["id"])
    assert rollout["state"] == "failed"
    assert "older than installed" in rollout["devices"][0]["reason"]
    assert fleet.device()["bundle_id"] == newer["id"]


def test_bundle_signed_for_another_profile_is_refused_before_download(
    fleet: Fleet, reports: list[dict[str, Any]]
) -> None:
    good = fleet.build("1")
    assert fleet.roll_out(good["id"])["state"] == "complete"
    # Sign a target for another device class and offer it directly, past the API's checks.
    foreign = fleet.build("2")
    repository = fleet.app.state.repository
    data = (fleet.app.state.settings.bundles_dir / foreign["target"]).read_bytes()
    repository.add_target(
        "foreign.tar",
        data,
        {
            "bundle_id": "foreign",
            "release": 99,
            "model": "digits",
            "model_version": "2",
            "profiles": ["arm64-sbc-tflite"],
            "hardware": [platform.machine()],
        },
    )
    fleet.app.state.link.publish_offer(
        DEVICE, BundleOffer(bundle_id="foreign", target="foreign.tar", release=99)
    )
    foreign_reports = lambda: [r for r in reports if r["bundle_id"] == "foreign"]  # noqa: E731
    failed = wait_until(
        lambda: [r for r in foreign_reports() if r["state"] == "failed"], "the refusal report"
    )
    assert "profile" in failed[0]["reason"]
    assert [r["state"] for r in foreign_reports()] == ["downloading", "failed"]
    assert fleet.device()["bundle_id"] == good["id"]


def test_malformed_messages_are_dropped_and_both_sides_keep_working(fleet: Fleet) -> None:
    rogue = MqttLink(client_id="cp-rogue0001", broker=fleet.broker.address)
    rogue.start()
    assert rogue.wait_connected(10)
    garbage = [b"{not json", b'{"type": "teleport"}', b"\xff\xfe", b'{"type": "offer"}', b""]
    for payload in garbage:
        for topic in (
            topics.down(DEVICE, topics.Down.OFFER),
            topics.down(DEVICE, topics.Down.FETCH),
            topics.up(DEVICE, topics.Up.REPORT),
            topics.up(DEVICE, topics.Up.FETCH),
            "fleet/not-a-device/up/status",
        ):
            rogue.publish(topic, payload, wait=10)
    rogue.stop()
    bundle = fleet.build("1")
    assert fleet.roll_out(bundle["id"])["state"] == "complete"
    assert fleet.api.get("/api/v1/health").json()["broker_connected"] is True
