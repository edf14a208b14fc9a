"""Fault injection against real processes: a real Mosquitto, the control plane app and
``edgefleet-agent`` OS processes that are killed, starved of their broker and fed bad
bundles. Every wait is bounded; outcomes are read from the control plane's API, the
agent's journal on disk and its inference endpoint.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.bundle import FileRole, write_bundle
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import BundleOffer, DeviceCommand
from edgefleet.mqtt import MqttLink
from edgefleet.tensors import decode_tensor, encode_tensor
from edgefleet_demo.digits import DigitsModel, train_digits_model
from edgefleet_demo.spine import agent_config
from tests.support.harness import build_bundle, register_model, roll_out, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-faults0001"
TIMEOUT = 60.0
CRASH_EXIT = 137


@dataclass
class Rig:
    """The control plane, its broker and (re)startable agent processes for one device."""

    api: TestClient
    app: Any
    broker: MosquittoBroker
    tmp: Path
    digits: DigitsModel
    port: int
    extra_config: str = ""
    probation: str = "seconds = 0\n"
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.tmp / "agent"

    @property
    def log(self) -> Path:
        return self.tmp / "agent.log"

    def start_agent(self, env: dict[str, str] | None = None) -> None:
        config = self.tmp / "agent.toml"
        config.write_text(
            agent_config(
                device_id=DEVICE,
                profile=PROFILE,
                broker=self.broker.url,
                data_dir=self.data_dir,
                trust_root=self.tmp / "root.json",
                port=self.port,
            )
            + "[link]\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n"
            f"[probation]\n{self.probation}" + self.extra_config
        )
        self.starts += 1
        self.process = start_agent(config, self.log, env)
        wait_until(self.ready, "the agent's endpoint to answer")
        # The endpoint answers before the MQTT status has reached the control plane.
        wait_until(
            lambda: self.api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
            "the control plane to know the device",
        )

    def ready(self) -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/v2/health/live", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop_agent(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)

    def build(self, version: str) -> dict[str, Any]:
        return build_bundle(self.api, version, PROFILE)

    def roll_out(self, bundle_id: str) -> dict[str, Any]:
        return roll_out(self.api, bundle_id, DEVICE)

    def offer(self, bundle_id: str, target: str, release: int) -> None:
        self.app.state.link.publish_offer(
            DEVICE, BundleOffer(bundle_id=bundle_id, target=target, release=release)
        )

    def derive(
        self,
        base: dict[str, Any],
        bundle_id: str,
        release: int,
        change: Callable[[dict[str, tuple[bytes, FileRole]]], None],
    ) -> str:
        """Sign and publish a variant of ``base`` (files changed by ``change``); its target."""
        source = self.app.state.settings.bundles_dir / base["target"]
        with tarfile.open(source) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        fields = json.loads(members.pop("manifest.json"))
        roles = {entry["path"]: entry["role"] for entry in fields.pop("files")}
        files: dict[str, tuple[bytes, FileRole]] = {
            name: (data, roles[name]) for name, data in members.items()
        }
        change(files)
        fields.update(bundle_id=bundle_id, release=release)
        target = f"{bundle_id}.tar"
        path = self.tmp / target
        write_bundle(path, fields, files)
        self.app.state.repository.add_target(
            target,
            path.read_bytes(),
            {
                "bundle_id": bundle_id,
                "release": release,
                "model": "digits",
                "model_version": fields["model"]["version"],
                "profiles": fields["profiles"],
                "hardware": fields["hardware"],
            },
        )
        return target

    def infer_version(self) -> str:
        body = {"inputs": [encode_tensor("input", self.digits.holdout_x[:20].astype(np.float32))]}
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/v2/models/digits/infer", json=body, timeout=10
        )
        assert response.status_code == 200, response.text
        payload = response.json()
        labels = dict(decode_tensor(o) for o in payload["outputs"])["label"]
        assert float(np.mean(labels == self.digits.holdout_y[:20])) >= 0.8
        return str(payload["model_version"])

    def journal(self) -> dict[str, Any]:
        path = self.data_dir / "models" / "digits" / "journal.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def status_file(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def count(self, **params: str) -> int:
        return int(self.api.get("/api/v1/events/count", params=params).json()["count"])

    def events(self, kind: str) -> list[dict[str, Any]]:
        response = self.api.get(
            "/api/v1/events", params={"device_id": DEVICE, "kind": kind, "limit": 10_000}
        )
        return list(response.json())


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel) -> Iterator[Rig]:
    app = create_app(Settings(data_dir=tmp_path / "cp", broker_url=broker.url))
    with TestClient(app) as api:
        for version in ("1", "2"):
            register_model(api, digits.onnx_bytes, digits.samples, version=version)
        (tmp_path / "root.json").write_bytes(api.get("/api/v1/trust/root").content)
        rig = Rig(api=api, app=app, broker=broker, tmp=tmp_path, digits=digits, port=free_port())
        watcher = MqttLink(client_id="cp-faultwatch", broker=broker.address, clean_start=True)
        watcher.subscribe(
            topics.up(DEVICE, topics.Up.REPORT), lambda m: rig.reports.append(json.loads(m.payload))
        )
        watcher.start()
        try:
            yield rig
        finally:
            watcher.stop()
            rig.stop_agent()


def restart_broker_control_plane_first(rig: Rig) -> None:
    """Restart the broker with the agent frozen until the control plane has re-subscribed.

    The control plane's ingest session is ``clean_start`` (see the report): anything a
    device publishes before it re-subscribes is acknowledged by the broker, then lost.
    """
    assert rig.process is not None
    rig.process.send_signal(signal.SIGSTOP)
    try:
        rig.broker.start()
        assert rig.app.state.link.wait_subscribed(TIMEOUT)
    finally:
        rig.process.send_signal(signal.SIGCONT)


def reports_for(rig: Rig, bundle_id: str, state: str) -> list[dict[str, Any]]:
    return [r for r in rig.reports if r["bundle_id"] == bundle_id and r["state"] == state]


# -- kill -9 at every install state ------------------------------------------------------

# state the agent dies in -> (journal state after restart, model version served)
CRASH_OUTCOMES = {
    "offered": ("committed", "2"),  # resumed: installed from the start
    "downloading": ("committed", "2"),  # resumed: download continued
    "verified": ("committed", "2"),  # resumed: the verified download is reused
    "staged": ("failed", "1"),  # rolled back: the unproven slot is discarded
    "smoke_tested": ("failed", "1"),  # rolled back
    "active": ("rolled_back", "1"),  # recorded, switch not done: rolled back
}


@pytest.mark.parametrize("state", list(CRASH_OUTCOMES))
def test_agent_killed_in_each_install_state_serves_a_verified_model_after_restart(
    rig: Rig, state: str
) -> None:
    old = rig.build("1")
    new = rig.build("2")
    rig.start_agent(env={"EDGEFLEET_AGENT_CRASH_AT": f"{state}@{new['id']}"})
    assert rig.roll_out(old["id"])["state"] == "complete"
    assert rig.infer_version() == "1"

    rig.offer(new["id"], new["target"], new["release"])
    assert rig.wait_exit() == CRASH_EXIT
    assert rig.journal()["state"] == state

    rig.start_agent()
    expected_state, expected_version = CRASH_OUTCOMES[state]
    journal = wait_until(
        lambda: rig.journal() if rig.journal()["state"] == expected_state else None,
        f"the journal to reach {expected_state}",
    )
    assert journal["bundle_id"] == new["id"]
    assert journal["restarts"] == 1
    assert rig.infer_version() == expected_version
    ready = httpx.get(f"http://127.0.0.1:{rig.port}/v2/health/ready", timeout=5)
    assert ready.status_code == 200
    if expected_version == "1":  # the report may trail the journal on a loaded machine
        wait_until(
            lambda: (
                reports_for(rig, new["id"], "failed") or reports_for(rig, new["id"], "rolled_back")
            ),
            "the failed or rolled_back report",
        )


def test_agent_killed_while_deferred_waits_again_after_restart_then_switches(rig: Rig) -> None:
    old = rig.build("1")
    new = rig.build("2")
    rig.start_agent(env={"EDGEFLEET_AGENT_CRASH_AT": f"deferred@{new['id']}"})
    assert rig.roll_out(old["id"])["state"] == "complete"
    lock_url = f"http://127.0.0.1:{rig.port}/v2/agent/update-lock"
    held = httpx.post(lock_url, json={"holder": "app", "ttl_s": 600}, timeout=10).json()

    rig.offer(new["id"], new["target"], new["release"])
    assert rig.wait_exit() == CRASH_EXIT
    assert rig.journal()["state"] == "deferred"

    rig.start_agent()
    # Resumed, not rolled back: the staged slot re-verified, the wait reported (the
    # agent died right after recording deferred, before its first report).
    wait_until(lambda: reports_for(rig, new["id"], "deferred"), "the resumed wait's report")
    assert rig.journal()["state"] == "deferred" and rig.journal()["restarts"] == 0
    assert rig.infer_version() == "1"
    assert not reports_for(rig, new["id"], "failed")

    httpx.delete(f"{lock_url}/{held['lock_id']}", timeout=10).raise_for_status()
    wait_until(lambda: reports_for(rig, new["id"], "active"), "the switch once released")
    assert rig.infer_version() == "2"


# -- broker killed mid-download ---------------------------------------------------------


def test_download_resumes_from_its_last_chunk_after_the_broker_is_killed(rig: Rig) -> None:
    rig.extra_config = (
        "[fetch]\nchunk_kib = 16\nwindow = 1\ntimeout_s = 1.0\nretries = 1\nreconnect_wait_s = 60\n"
    )
    base = rig.build("1")
    pad = io.BytesIO()
    np.save(pad, np.random.default_rng(0).integers(0, 255, 24 * 1024 * 1024, dtype=np.uint8))
    padding = pad.getvalue()
    target = rig.derive(
        base, "digits-padded-r50", 50, lambda f: f.update({"pad.npy": (padding, "other")})
    )
    rig.start_agent()
    rig.offer("digits-padded-r50", target, 50)

    parts = rig.data_dir / "downloads" / "parts"

    def part_size() -> int:
        return sum(p.stat().st_size for p in parts.glob("*.part")) if parts.exists() else 0

    wait_until(lambda: part_size() > 2 * 1024 * 1024, "the download to be under way")
    rig.broker.kill()
    wait_until(lambda: "transfer interrupted" in rig.log.read_text(), "the agent to notice")
    interrupted_at = part_size()
    assert 0 < interrupted_at < len(padding)
    rig.broker.start()

    # 24 MiB in 16 KiB chunks, one in flight, then TUF and smoke checks: on a loaded
    # 2-core machine this took over a minute, so the bound is wider than the default.
    wait_until(
        lambda: rig.journal().get("state") == "committed", "the padded bundle to install", 240
    )
    log = rig.log.read_text()
    started = [line for line in log.splitlines() if "download started path=targets/" in line]
    assert len([line for line in started if line.endswith("offset=0")]) == 1, started
    resumed = [line for line in log.splitlines() if "download resumed path=targets/" in line]
    assert resumed, "the download restarted instead of resuming"
    offset = int(resumed[-1].rsplit("offset=", 1)[1])
    assert offset >= interrupted_at > 0
    assert rig.journal()["history"].count("downloading") == 1


# -- broker down under steady inference ----------------------------------------------------


def test_every_event_spooled_while_the_broker_was_down_arrives_exactly_once(rig: Rig) -> None:
    rig.extra_config = "[telemetry]\nwindow_s = 0.3\nreplay_per_s = 200\n"
    bundle = rig.build("1")
    rig.start_agent()
    assert rig.roll_out(bundle["id"])["state"] == "complete"

    served = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal served
        while not stop.is_set():
            rig.infer_version()
            served += 1
            time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: served > 20, "inference traffic")
        rig.broker.kill()
        wait_until(lambda: rig.status_file().get("link") == "disconnected", "the link to drop")
        wait_until(lambda: rig.status_file().get("spool_depth", 0) >= 20, "events to pile up")
        stop.set()
        worker.join(30)
        restart_broker_control_plane_first(rig)
        wait_until(lambda: rig.status_file().get("link") == "connected", "the link to return")
    finally:
        stop.set()
        worker.join(30)

    def delivered() -> int:
        return sum(e["data"]["count"] for e in rig.events("inference"))

    wait_until(lambda: delivered() >= served, f"every inference window to arrive ({served})")
    events = rig.events("inference")
    assert delivered() == served  # nothing lost, nothing counted twice
    assert len({e["event_id"] for e in events}) == len(events)
    assert rig.count(device_id=DEVICE, kind="inference") == len(events)
    assert rig.count(device_id=DEVICE, kind="install") >= 2


# -- spool cap ----------------------------------------------------------------------------


def test_full_spool_drops_the_least_important_events_reports_it_and_keeps_serving(
    rig: Rig,
) -> None:
    rig.extra_config = "[telemetry]\nwindow_s = 0.1\nspool_max_mb = 0.004\n"
    bundle = rig.build("1")
    rig.start_agent()
    assert rig.roll_out(bundle["id"])["state"] == "complete"
    rig.broker.kill()
    wait_until(lambda: "spool full" in rig.log.read_text(), "the spool to overflow")
    for _ in range(5):
        assert rig.infer_version() == "1"
    restart_broker_control_plane_first(rig)

    reports = wait_until(lambda: rig.events("spool"), "the drop report")
    dropped = reports[0]["data"]["dropped"]
    assert int(dropped.get("3", 0)) > 0, dropped  # resource events (priority 3) go first
    assert "0" not in dropped  # install events kept
    assert rig.process is not None and rig.process.poll() is None
    assert rig.count(device_id=DEVICE, kind="install") >= 2


# -- bundle that verifies but fails its smoke test -----------------------------------------


def test_bundle_failing_its_smoke_test_is_refused_and_the_old_model_kept(rig: Rig) -> None:
    good = rig.build("1")
    rig.start_agent()
    assert rig.roll_out(good["id"])["state"] == "complete"

    def wrong_expectations(files: dict[str, tuple[bytes, FileRole]]) -> None:
        for name, (data, role) in list(files.items()):
            if role == "smoke_output":
                array = np.load(io.BytesIO(data), allow_pickle=False)
                out = io.BytesIO()
                np.save(out, (array + 1).astype(array.dtype), allow_pickle=False)
                files[name] = (out.getvalue(), role)

    target = rig.derive(good, "digits-badsmoke-r60", 60, wrong_expectations)
    rig.offer("digits-badsmoke-r60", target, 60)
    failed = wait_until(lambda: reports_for(rig, "digits-badsmoke-r60", "failed"), "the refusal")
    assert "smoke test" in failed[0]["reason"]
    assert [r["state"] for r in rig.reports if r["bundle_id"] == "digits-badsmoke-r60"] == [
        "downloading",
        "verified",
        "staged",
        "failed",
    ]
    assert rig.journal()["state"] == "failed"
    assert rig.infer_version() == "1"
    active = json.loads((rig.data_dir / "models" / "digits" / "active.json").read_text())
    assert active["bundle_id"] == good["id"]


# -- rollback command ----------------------------------------------------------------------


def test_rollback_command_switches_back_to_the_previous_slot_and_reports_why(rig: Rig) -> None:
    old = rig.build("1")
    new = rig.build("2")
    rig.start_agent()
    assert rig.roll_out(old["id"])["state"] == "complete"
    assert rig.roll_out(new["id"])["state"] == "complete"
    assert rig.infer_version() == "2"
    rig.app.state.link.publish_command(
        DEVICE, DeviceCommand(command="rollback", reason="canary error rate too high")
    )
    rolled = wait_until(lambda: reports_for(rig, new["id"], "rolled_back"), "the roll-back report")
    assert rolled[0]["reason"] == "canary error rate too high"
    assert rig.infer_version() == "1"
    assert (
        json.loads((rig.data_dir / "models" / "digits" / "active.json").read_text())["bundle_id"]
        == old["id"]
    )


# -- probation -----------------------------------------------------------------------------


def test_model_breaching_its_probation_rule_is_switched_back_by_the_agent_itself(
    rig: Rig,
) -> None:
    # A latency rule no real model can keep: the first 20 requests on the new model
    # decide, and no command from the control plane is needed.
    rig.probation = "seconds = 600\nmin_requests = 20\nmax_p95_ms = 0.001\n"
    old = rig.build("1")
    new = rig.build("2")
    rig.start_agent()
    assert rig.roll_out(old["id"])["state"] == "complete"
    rig.offer(new["id"], new["target"], new["release"])
    wait_until(lambda: reports_for(rig, new["id"], "active"), "the new model to go active")
    served = [rig.infer_version() for _ in range(25)]
    assert served[0] == "2"

    rolled = wait_until(lambda: reports_for(rig, new["id"], "rolled_back"), "the self roll-back")
    assert "probation breach: latency p95" in rolled[0]["reason"]
    assert "> 0.001 ms" in rolled[0]["reason"]
    assert rig.infer_version() == "1"
    assert (
        json.loads((rig.data_dir / "models" / "digits" / "active.json").read_text())["bundle_id"]
        == old["id"]
    )
    assert rig.journal()["state"] == "rolled_back"


# -- shadow --------------------------------------------------------------------------------


def shadow_rollout(rig: Rig, bundle_id: str, min_agreement: float) -> int:
    response = rig.api.post(
        "/api/v1/rollouts",
        json={
            "bundle_id": bundle_id,
            "device_ids": [DEVICE],
            "strategy": "shadow",
            "waves": [1],
            "soak_seconds": 0.5,
            "gates": {"min_agreement": min_agreement, "min_inferences": 200},
        },
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def serve_until_ended(rig: Rig, rollout_id: int) -> tuple[dict[str, Any], set[str]]:
    """Keep live traffic flowing until the rollout ends; the model versions that answered."""
    served: set[str] = set()

    def ended() -> dict[str, Any] | None:
        served.add(rig.infer_version())
        rollout = rig.api.get(f"/api/v1/rollouts/{rollout_id}").json()
        return rollout if rollout["state"] not in ("in_progress", "paused") else None

    return dict(wait_until(ended, f"shadow rollout {rollout_id} to end")), served


def test_shadow_model_runs_beside_the_active_one_and_its_agreement_passes_the_gate(
    rig: Rig,
) -> None:
    rig.extra_config = "[telemetry]\nwindow_s = 0.3\n"
    old = rig.build("1")
    twin = rig.build("2")  # the same weights: agreement must be perfect
    rig.start_agent()
    assert rig.roll_out(old["id"])["state"] == "complete"

    rollout, served = serve_until_ended(rig, shadow_rollout(rig, twin["id"], 0.99))

    assert rollout["state"] == "complete", rollout.get("reason")
    assert served == {"1"}  # clients only ever got the active model's answers
    (gate,) = rollout["wave_status"][0]["gates"]
    assert (gate["name"], gate["value"], gate["ok"]) == ("agreement", 1.0, True)
    shadow = [e["data"] for e in rig.events("shadow") if e["data"]["bundle_id"] == twin["id"]]
    assert sum(s["count"] for s in shadow) >= 200
    assert all(s["agreement"] == 1.0 for s in shadow if s["count"])
    assert (
        json.loads((rig.data_dir / "models" / "digits" / "active.json").read_text())["bundle_id"]
        == old["id"]
    )
    # The completed rollout stopped the shadow: its files are gone from the device.
    wait_until(lambda: not (rig.data_dir / "shadow").exists(), "the shadow to be discarded")


def test_disagreeing_shadow_model_aborts_the_rollout_and_never_answers_a_client(
    rig: Rig,
) -> None:
    rig.extra_config = "[telemetry]\nwindow_s = 0.3\n"
    weak = train_digits_model(max_iter=2)  # barely trained: disagrees on many digits
    register_model(rig.api, weak.onnx_bytes, rig.digits.samples, version="3")
    old = rig.build("1")
    rig.start_agent()
    assert rig.roll_out(old["id"])["state"] == "complete"
    # The gate would refuse this model outright; the operator ships it anyway, in shadow.
    weak_bundle = rig.api.post(
        "/api/v1/bundles",
        json={"model": "digits", "version": "3", "profile": PROFILE, "max_accuracy_drop": 1.0},
    )
    assert weak_bundle.status_code == 201, weak_bundle.text

    rollout, served = serve_until_ended(rig, shadow_rollout(rig, weak_bundle.json()["id"], 0.99))

    assert rollout["state"] == "aborted"
    assert "agreement" in rollout["reason"]
    assert served == {"1"}
    wait_until(lambda: not (rig.data_dir / "shadow").exists(), "the shadow to be discarded")
    assert (
        json.loads((rig.data_dir / "models" / "digits" / "active.json").read_text())["bundle_id"]
        == old["id"]
    )
