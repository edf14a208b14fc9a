"""Attacks on the update path, against a real agent, control plane and Mosquitto.

The attacker controls the repository's files as served (a compromised mirror or
store): they can replay, swap, pad, re-sign with their own keys, or publish
signed bundles with hostile contents. Each attack must fail, be reported with a
reason, and leave the installed model serving.
"""

from __future__ import annotations

import glob
import io
import json
import platform
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Timestamp

from edgefleet import topics
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import BundleOffer
from edgefleet.mqtt import MqttLink
from edgefleet.tensors import encode_tensor
from edgefleet_demo.digits import DigitsModel
from tests.support.harness import build_bundle, provision_agent, register_model, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e
PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-attacked01"


class Target:
    """A device with a good model installed, and the attacker's view of the repository."""

    def __init__(
        self,
        api: TestClient,
        app: Any,
        broker: MosquittoBroker,
        port: int,
        config: Path,
        log: Path,
    ) -> None:
        self.api, self.app, self.broker, self.port = api, app, broker, port
        self.config, self.log = config, log
        self.repository = app.state.repository
        self.metadata = self.repository.metadata_dir
        self.reports: list[dict[str, Any]] = []
        self.expected_version = "1"  # the model that must still serve after the attack
        self._watcher = MqttLink(client_id="cp-watcher02", broker=broker.address, clean_start=True)
        self._watcher.subscribe(
            topics.up(DEVICE, topics.Up.REPORT),
            lambda m: self.reports.append(json.loads(m.payload)),
        )
        self._watcher.start()
        assert self._watcher.wait_connected(10)
        self.agent = self.start_agent()

    def start_agent(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return start_agent(self.config, self.log, env)

    def restart_agent(self, env: dict[str, str] | None = None) -> None:
        self.stop_agent()
        self.agent = self.start_agent(env)
        wait_until(self.ready, "the restarted agent to serve")

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/v2/health/ready"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_agent(self) -> None:
        self.agent.terminate()
        self.agent.wait(15)

    def build(self, version: str) -> dict[str, Any]:
        return build_bundle(self.api, version, PROFILE)

    def offer(self, bundle_id: str, target: str, release: int) -> dict[str, Any]:
        """Offer directly (as a rollout would) and wait for the final report."""
        start = len(self.reports)
        self.app.state.link.publish_offer(
            DEVICE, BundleOffer(bundle_id=bundle_id, target=target, release=release)
        )

        def final() -> dict[str, Any] | None:
            for report in self.reports[start:]:
                if report["bundle_id"] == bundle_id and report["state"] in ("active", "failed"):
                    return report
            return None

        return dict(wait_until(final, f"the outcome of {bundle_id}"))

    def serving_version(self) -> str:
        body = {"inputs": [encode_tensor("input", np.zeros((1, 64), np.float32))]}
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/v2/models/digits/infer", json=body, timeout=10
        )
        assert response.status_code == 200, response.text
        return str(response.json()["model_version"])

    def sign_timestamp_with(self, signer: CryptoSigner, **changes: Any) -> bytes:
        md = Metadata[Timestamp].from_file(str(self.metadata / "timestamp.json"))
        for field, value in changes.items():
            setattr(md.signed, field, value)
        md.signatures.clear()
        md.sign(signer)
        return md.to_bytes()

    def stop(self) -> None:
        self._watcher.stop()
        self.stop_agent()


@pytest.fixture
def target(tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel) -> Iterator[Target]:
    app = create_app(Settings(data_dir=tmp_path / "cp", broker_url=broker.url))
    with TestClient(app) as api:
        for version in ("1", "2"):
            register_model(api, digits.onnx_bytes, digits.samples, version=version)
        config, port = provision_agent(
            tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
        )
        harness = Target(api, app, broker, port, config, tmp_path / "agent.log")
        try:
            good = harness.build("1")
            wait_until(
                lambda: api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
                "the agent to come online",
            )
            assert harness.offer(good["id"], good["target"], good["release"])["state"] == "active"
            assert harness.serving_version() == "1"
            yield harness
            # Whatever the attack, the device still serves the last good model.
            assert harness.serving_version() == harness.expected_version
        finally:
            harness.stop()


def test_swapped_bundle_bytes_are_refused(target: Target) -> None:
    bundle = target.build("2")
    first = next(target.repository.targets_dir.glob("*.digits-1-*"))
    (swapped,) = target.repository.targets_dir.glob(f"{bundle['sha256']}.*")
    shutil.copyfile(first, swapped)  # a valid, signed bundle — but not this one
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "length" in report["reason"].lower() or "hash" in report["reason"].lower()


def test_endless_data_past_the_signed_length_is_cut_off(target: Target) -> None:
    bundle = target.build("2")
    (path,) = target.repository.targets_dir.glob(f"{bundle['sha256']}.*")
    with path.open("ab") as handle:
        handle.write(b"\0" * (10 * 1024 * 1024))
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "length" in report["reason"].lower() or "exceed" in report["reason"].lower()


def test_metadata_signed_by_an_unknown_key_is_refused(target: Target) -> None:
    bundle = target.build("2")
    forged = target.sign_timestamp_with(CryptoSigner.generate_ed25519())
    (target.metadata / "timestamp.json").write_bytes(forged)
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "timestamp was signed by 0/1 keys" in report["reason"]


def test_unsigned_metadata_is_refused(target: Target) -> None:
    bundle = target.build("2")
    raw = json.loads((target.metadata / "timestamp.json").read_bytes())
    raw["signatures"] = []
    (target.metadata / "timestamp.json").write_text(json.dumps(raw))
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "signed by 0/1 keys" in report["reason"]


def test_replayed_older_timestamp_is_refused(target: Target) -> None:
    old_timestamp = (target.metadata / "timestamp.json").read_bytes()  # the device has seen it
    bundle = target.build("2")
    legit = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert legit["state"] == "active"  # the device has now seen newer metadata
    target.expected_version = "2"
    newer = target.build("2")
    (target.metadata / "timestamp.json").write_bytes(old_timestamp)  # freeze attack
    report = target.offer(newer["id"], newer["target"], newer["release"])
    assert report["state"] == "failed"
    assert "version" in report["reason"].lower() or "not in signed" in report["reason"].lower()


def test_expired_metadata_is_refused(target: Target) -> None:
    bundle = target.build("2")
    (timestamp_signer,) = target.repository.keyring.signers("timestamp")
    expired = target.sign_timestamp_with(
        timestamp_signer,
        version=Metadata[Timestamp]
        .from_file(str(target.metadata / "timestamp.json"))
        .signed.version
        + 1,
        expires=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1),
    )
    (target.metadata / "timestamp.json").write_bytes(expired)
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "expired" in report["reason"].lower()


def libfaketime() -> str:
    """Debian's libfaketime (``make setup-test`` installs it): sets one process's clock."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime is missing: run `make setup-test` (apt-get install faketime)"
    return found[0]


def test_a_clock_set_back_before_the_time_floor_is_refused(target: Target) -> None:
    # The agent verified metadata signed just now, so its floor is now. Two days
    # back, every expired timestamp would look valid again: the agent must refuse
    # to judge any metadata rather than trust that clock.
    target.restart_agent(
        {"LD_PRELOAD": libfaketime(), "FAKETIME": "-2d", "DONT_FAKE_MONOTONIC": "1"}
    )
    bundle = target.build("2")
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "before the time floor" in report["reason"]


def test_slow_retrieval_of_the_bundle_fails_bounded_and_keeps_the_model(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mirror answers metadata at once but drips the bundle: each chunk arrives
    # later than the agent waits for it. The agent must give up after its bounded
    # retries instead of stalling forever. Blob delivery is off: the bytes must come
    # through the dripping request/response path (a blob missing falls back to it).
    target.config.write_text(
        target.config.read_text()
        + "[fetch]\nblobs = false\ntimeout_s = 0.3\nretries = 1\nresume_attempts = 0\n"
    )
    target.restart_agent()
    bundle = target.build("2")
    serve = target.repository.read_chunk

    def dripping(path: str, offset: int, length: int) -> tuple[bytes, int]:
        if path.startswith("targets/"):
            time.sleep(2.0)
        return serve(path, offset, length)

    monkeypatch.setattr(target.repository, "read_chunk", dripping)
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"
    assert "no answer after 3 attempts (a quick re-ask" in report["reason"]


def test_mixed_snapshot_and_targets_versions_are_refused(target: Target) -> None:
    bundle = target.build("2")
    timestamp = Metadata[Timestamp].from_file(str(target.metadata / "timestamp.json"))
    current = timestamp.signed.snapshot_meta.version
    # Serve the previous snapshot under the current snapshot's name.
    shutil.copyfile(
        target.metadata / f"{current - 1}.snapshot.json",
        target.metadata / f"{current}.snapshot.json",
    )
    report = target.offer(bundle["id"], bundle["target"], bundle["release"])
    assert report["state"] == "failed"


def _signed_hostile_bundle(target: Target, name: str, member: str, data: bytes) -> str:
    """A bundle whose archive holds ``member``, correctly signed as a target."""
    good = next(target.repository.targets_dir.glob("*.digits-1-*")).read_bytes()
    buffer = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(good)) as src,
        tarfile.open(fileobj=buffer, mode="w") as out,
    ):
        for info in src.getmembers():
            out.addfile(info, src.extractfile(info))
        extra = tarfile.TarInfo(member)
        extra.size = len(data)
        out.addfile(extra, io.BytesIO(data))
    target.repository.add_target(
        f"{name}.tar",
        buffer.getvalue(),
        {
            "bundle_id": name,
            "release": 50,
            "model": "digits",
            "model_version": "9",
            "profiles": [PROFILE],
            "hardware": [platform.machine()],
        },
    )
    return name


def _pickled_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"run": "os.system"}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


PICKLED_NPY = _pickled_npy()


@pytest.mark.parametrize(
    ("member", "data", "fragment"),
    [
        ("../../escape.json", b"{}", "unsafe member name"),
        ("payload.pkl", b"\x80\x04\x95", "file type not allowed"),
        ("evil.npy", PICKLED_NPY, "pickle"),
    ],
)
def test_signed_bundle_with_hostile_members_is_refused(
    target: Target, member: str, data: bytes, fragment: str
) -> None:
    name = _signed_hostile_bundle(target, "hostile", member, data)
    report = target.offer(name, f"{name}.tar", 50)
    assert report["state"] == "failed"
    assert fragment in report["reason"], report["reason"]
    assert not (target.repository.root_dir.parent.parent / "escape.json").exists()
