"""The control plane's HTTP API and fleet MQTT link against a real Mosquitto."""

from __future__ import annotations

import io
import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.messages import (
    FETCH_OFFSET,
    FETCH_REASON,
    FETCH_STATUS,
    FETCH_TOTAL,
    BundleOffer,
    DeviceStatus,
    FetchRequest,
    InstallReport,
    decode_as,
)
from edgefleet.mqtt import Incoming, MqttLink
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import ControlPlane
from tests.support.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

PROFILE = "x86-64-gateway-onnx"
TIMEOUT = 10.0


@pytest.fixture
def client(control_plane: ControlPlane) -> TestClient:
    test_client = control_plane(client_id="cp-test")
    wait_until(lambda: test_client.get("/api/v1/health").json()["broker_connected"])
    return test_client


class FakeDevice:
    """A device built on the shared MQTT link: publishes up, collects everything down."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.device_id = device_id
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.link = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
        self.link.subscribe(topics.device_down_filter(device_id), self.inbox.put)
        self.link.start()
        assert self.link.wait_connected(TIMEOUT)

    def publish(self, channel: topics.Up, payload: bytes, **kw: Any) -> None:
        self.link.publish(topics.up(self.device_id, channel), payload, wait=TIMEOUT, **kw)

    def announce(self, profile: str = PROFILE) -> None:
        status = DeviceStatus(online=True, profile=profile, agent_version="0.1.0")
        self.publish(topics.Up.STATUS, status.to_bytes(), retain=True)

    def receive(self, channel: topics.Down) -> Incoming:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                message = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if message.topic == topics.down(self.device_id, channel):
                return message
        raise AssertionError(f"no {channel} message for {self.device_id} within {TIMEOUT}s")

    def fetch(self, path: str, offset: int, length: int, correlation: bytes) -> Incoming:
        request = FetchRequest(path=path, offset=offset, length=length)
        self.publish(topics.Up.FETCH, request.to_bytes(), correlation=correlation)
        return self.receive(topics.Down.FETCH)


@pytest.fixture
def device(broker: MosquittoBroker) -> Iterator[FakeDevice]:
    fake = FakeDevice(broker, "dev-test0001")
    yield fake
    fake.link.stop()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def register(client: TestClient, digits: DigitsModel, *, name: str = "digits", **kw: Any) -> Any:
    files = {
        "model": ("model.onnx", kw.get("model", digits.onnx_bytes)),
        "samples": ("samples.npy", kw.get("samples", npy(digits.samples))),
    }
    return client.post(
        "/api/v1/models", data={"name": name, "version": kw.get("version", "1")}, files=files
    )


def build(client: TestClient, **kw: str) -> Any:
    body = {"model": "digits", "version": "1", "profile": PROFILE, **kw}
    return client.post("/api/v1/bundles", json=body)


def test_registered_model_builds_a_bundle_listed_by_the_api(
    client: TestClient, digits: DigitsModel
) -> None:
    response = register(client, digits)
    assert response.status_code == 201, response.text
    model = response.json()
    assert set(model) == {
        "id",
        "name",
        "version",
        "sha256",
        "size_bytes",
        "created_at",
        "signature",
        "format",
        "formats",
        "artifact_check",
        "labels",
    }
    assert model["signature"]["inputs"][0]["name"] == "input"
    assert (model["format"], model["formats"], model["labels"]) == ("onnx", ["onnx"], None)
    assert [m["name"] for m in client.get("/api/v1/models").json()] == ["digits"]

    response = build(client)
    assert response.status_code == 201, response.text
    bundle = response.json()
    assert bundle["id"] == f"digits-1-{PROFILE}-r1"
    assert bundle["target"] == f"{bundle['id']}.tar"
    assert bundle["release"] == 1
    assert bundle["manifest"]["bundle_id"] == bundle["id"]
    assert client.get(f"/api/v1/bundles/{bundle['id']}").json() == bundle
    assert client.get("/api/v1/bundles").json() == [bundle]
    root = client.get("/api/v1/trust/root")
    assert root.headers["content-type"] == "application/json"
    assert root.json()["signed"]["_type"] == "root"


def test_api_refuses_bad_requests_with_reasons(client: TestClient, digits: DigitsModel) -> None:
    assert register(client, digits).status_code == 201

    duplicate = register(client, digits)
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["detail"]

    invalid = register(client, digits, version="2", model=b"not onnx")
    assert invalid.status_code == 422
    assert "not an ONNX or TFLite model" in invalid.json()["detail"]

    narrow = register(client, digits, version="3", samples=npy(digits.samples[:, :10]))
    assert narrow.status_code == 422
    assert "width 10" in narrow.json()["detail"]

    wrong_dtype = register(
        client, digits, version="4", samples=npy(digits.samples.astype(np.float64))
    )
    assert wrong_dtype.status_code == 422
    assert "float32" in wrong_dtype.json()["detail"]

    assert register(client, digits, name="Bad Name").status_code == 422

    unknown_profile = build(client, profile="no-such-profile")
    assert unknown_profile.status_code == 404
    assert "no-such-profile" in unknown_profile.json()["detail"]
    assert build(client, version="9").status_code == 404
    assert client.get("/api/v1/bundles/nope").status_code == 404
    assert client.get("/api/v1/devices/dev-missing01").status_code == 404
    assert client.get("/api/v1/rollouts/99").status_code == 404

    assert client.post("/api/v1/rollouts", json={"bundle_id": "nope"}).status_code == 404
    bundle_id = build(client).json()["id"]
    no_devices = client.post("/api/v1/rollouts", json={"bundle_id": bundle_id})
    assert no_devices.status_code == 422
    assert "no devices" in no_devices.json()["detail"]


def test_device_status_appears_in_devices(client: TestClient, device: FakeDevice) -> None:
    device.announce()

    found = wait_until(lambda: client.get(f"/api/v1/devices/{device.device_id}").status_code == 200)
    assert found
    listed = client.get("/api/v1/devices").json()
    assert [d["id"] for d in listed] == [device.device_id]
    assert listed[0]["online"] is True
    assert listed[0]["profile"] == PROFILE
    assert listed[0]["agent_version"] == "0.1.0"

    device.publish(topics.Up.STATUS, DeviceStatus(online=False).to_bytes(), retain=True)
    offline = wait_until(
        lambda: (
            (d := client.get(f"/api/v1/devices/{device.device_id}").json())["online"] is False and d
        )
    )
    assert offline["profile"] == PROFILE


def test_fetch_request_gets_the_requested_bytes_with_its_correlation_data(
    client: TestClient, device: FakeDevice
) -> None:
    root = client.get("/api/v1/trust/root").content

    reply = device.fetch("metadata/1.root.json", 10, 100, correlation=b"req-1")
    assert reply.correlation == b"req-1"
    assert reply.payload == root[10:110]
    props = reply.user_properties
    assert (props[FETCH_STATUS], props[FETCH_TOTAL], props[FETCH_OFFSET]) == (
        "200",
        str(len(root)),
        "10",
    )

    missing = device.fetch("targets/nothing.tar", 0, 100, correlation=b"req-2")
    assert missing.correlation == b"req-2"
    assert missing.user_properties[FETCH_STATUS] == "404"
    assert missing.user_properties[FETCH_REASON]


def test_malformed_messages_are_dropped_and_the_link_keeps_working(
    client: TestClient, device: FakeDevice, broker: MosquittoBroker
) -> None:
    device.publish(topics.Up.STATUS, b"{not json")
    device.publish(topics.Up.REPORT, b'{"type": "mystery", "v": 1}')
    device.publish(topics.Up.FETCH, b"[]", correlation=b"bad")
    bad = device.receive(topics.Down.FETCH)
    assert (bad.correlation, bad.user_properties[FETCH_STATUS]) == (b"bad", "400")
    device.link.publish("fleet/NOT_A_DEVICE/up/status", b"{}", wait=TIMEOUT)

    device.announce()
    wait_until(lambda: client.get(f"/api/v1/devices/{device.device_id}").status_code == 200)
    assert [d["id"] for d in client.get("/api/v1/devices").json()] == [device.device_id]
    reply = device.fetch("metadata/timestamp.json", 0, 10, correlation=b"after")
    assert reply.user_properties[FETCH_STATUS] == "200"


def test_rollout_offers_the_bundle_and_reports_complete_it(
    client: TestClient, device: FakeDevice, digits: DigitsModel, broker: MosquittoBroker
) -> None:
    assert register(client, digits).status_code == 201
    bundle = build(client).json()
    device.announce()
    other = FakeDevice(broker, "dev-other0001")
    try:
        other.announce(profile="some-other-profile")
        wait_until(lambda: len(client.get("/api/v1/devices").json()) == 2)

        wrong = client.post(
            "/api/v1/rollouts", json={"bundle_id": bundle["id"], "device_ids": [other.device_id]}
        )
        assert wrong.status_code == 422
        assert "profile" in wrong.json()["detail"]

        response = client.post("/api/v1/rollouts", json={"bundle_id": bundle["id"]})
        assert response.status_code == 201, response.text
        rollout = response.json()
        assert rollout["state"] == "in_progress"
        assert rollout["counts"] == {"offered": 1}
        assert [d["device_id"] for d in rollout["devices"]] == [device.device_id]
    finally:
        other.link.stop()

    offer = decode_as(device.receive(topics.Down.OFFER).payload, BundleOffer)
    assert (offer.rollout_id, offer.bundle_id, offer.target, offer.release) == (
        rollout["id"],
        bundle["id"],
        bundle["target"],
        bundle["release"],
    )

    url = f"/api/v1/rollouts/{rollout['id']}"
    for state in ("downloading", "verified", "staged"):
        report = InstallReport(bundle_id=offer.bundle_id, rollout_id=offer.rollout_id, state=state)
        device.publish(topics.Up.REPORT, report.to_bytes())
    wait_until(lambda: client.get(url).json()["counts"] == {"staged": 1})
    active = InstallReport(
        bundle_id=offer.bundle_id, rollout_id=offer.rollout_id, state="active", install_seconds=1.5
    )
    device.publish(topics.Up.REPORT, active.to_bytes())

    done = wait_until(lambda: (r := client.get(url).json())["state"] == "complete" and r)
    assert done["devices"][0]["state"] == "active"
    assert done["devices"][0]["install_seconds"] == 1.5
    installed = client.get(f"/api/v1/devices/{device.device_id}").json()
    assert (installed["bundle_id"], installed["release"]) == (bundle["id"], bundle["release"])


def test_rollout_fails_when_a_device_reports_failure(
    client: TestClient, device: FakeDevice, digits: DigitsModel
) -> None:
    assert register(client, digits).status_code == 201
    bundle = build(client).json()
    device.announce()
    wait_until(lambda: client.get(f"/api/v1/devices/{device.device_id}").status_code == 200)
    rollout = client.post(
        "/api/v1/rollouts", json={"bundle_id": bundle["id"], "device_ids": [device.device_id]}
    ).json()
    device.receive(topics.Down.OFFER)

    failed = InstallReport(
        bundle_id=bundle["id"], rollout_id=rollout["id"], state="failed", reason="smoke test"
    )
    device.publish(topics.Up.REPORT, failed.to_bytes())

    url = f"/api/v1/rollouts/{rollout['id']}"
    done = wait_until(lambda: (r := client.get(url).json())["state"] == "failed" and r)
    assert done["devices"][0]["reason"] == "smoke test"
