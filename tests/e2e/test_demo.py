"""The main job as a user runs it: `edgefleet demo --agents 3`, every part a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_rolls_a_signed_bundle_per_device_class_to_agents_that_answer_accurately(
    tmp_path: Path,
) -> None:
    summary_path = tmp_path / "summary.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.control_plane",
            "demo",
            "--agents",
            "4",
            "--data-dir",
            str(tmp_path / "demo"),
            "--summary-json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        # As a user runs it: API authorization on (the suite turns it off elsewhere).
        env={k: v for k, v in os.environ.items() if k != "EDGEFLEET_API_AUTH"},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["rollout_state"] == "complete"
    assert len(summary["devices"]) == 4
    # Two device classes side by side, each with its own bundle: one onnxruntime, one TFLite.
    bundles = summary["bundles"]
    assert len(bundles) == 2
    assert len({b["id"] for b in bundles.values()}) == 2
    assert {d["profile"] for d in summary["devices"]} == set(bundles)
    for device in summary["devices"]:
        assert device["state"] == "active"
        assert device["bundle_id"] == bundles[device["profile"]]["id"]
        assert device["release"] == bundles[device["profile"]]["release"]
        assert device["accuracy"] >= 0.9
        assert device["install_seconds"] > 0
    # Each agent recorded its class's bundle as active on its own disk, in its runtime.
    by_id = {d["device_id"]: d for d in summary["devices"]}
    runtimes = set()
    for device_dir in (tmp_path / "demo" / "agents").iterdir():
        model_dir = device_dir / "data" / "models" / "digits"
        active = json.loads((model_dir / "active.json").read_text())
        assert active["bundle_id"] == by_id[device_dir.name]["bundle_id"]
        slot = model_dir / "slots" / active["slot"]
        runtimes.add(json.loads((slot / "manifest.json").read_text())["runtime"]["name"])
    assert runtimes == {"onnxruntime", "ai-edge-litert"}
    assert "stopping agents, control plane and broker" in completed.stdout


def test_demo_with_drift_closes_the_loop_and_drift_falls(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.control_plane",
            "demo",
            "--agents",
            "3",
            "--drift",
            "--summary-json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env={k: v for k, v in os.environ.items() if k != "EDGEFLEET_API_AUTH"},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    drift = json.loads(summary_path.read_text())["drift"]
    assert drift["request"]["state"] == "rolled_out"
    assert drift["request"]["new_version"] == "2"
    assert drift["share_after"] < drift["share_before"]
    for device in drift["drifted_devices"]:
        assert drift["accuracy_shifted_v2"][device] > drift["accuracy_shifted_v1"][device] + 0.2
    for line in ("fleet drift rule fired", "retraining request", "canary rollout", "drift fell"):
        assert line in completed.stdout
