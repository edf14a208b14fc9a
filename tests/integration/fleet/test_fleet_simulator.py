"""The fleet simulator (bench/fleet_rollout.py) in its quick mode, end to end.

A handful of simulated devices in two worker processes, each with its own MQTT
session and data directory, against a real Mosquitto and the control plane as its
own process: every device verifies and installs the bundle and reports active,
and every telemetry event it publishes is stored. No timing is asserted here;
speed is what the benchmark itself prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "fleet_rollout.py"
DEVICES = 6
EVENTS_PER_DEVICE = 5


def test_every_simulated_device_installs_reports_active_and_its_events_are_stored(
    tmp_path: Path,
) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--devices",
            str(DEVICES),
            "--events-per-device",
            str(EVENTS_PER_DEVICE),
            "--data-dir",
            str(tmp_path / "fleet"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    (result,) = json.loads(out.read_text())["results"]
    assert result["devices"] == DEVICES
    # The control plane saw every device report active, and the rollout went through.
    assert result["rollout_state"] == "complete"
    assert result["cp_states"] == {"active": DEVICES}
    # Each device's own active.json names the bundle, and it reported active.
    assert result["active"] == DEVICES
    assert result["not_active"] == [] and result["failed"] == {}
    assert len(result["install_s"]) == DEVICES
    assert [w["devices"] for w in result["waves"]] == [1, 2, 3]  # 1, 50 %, 100 % of 6
    # Every published telemetry event is a row in the control plane's events table.
    assert result["events_published"] == DEVICES * EVENTS_PER_DEVICE
    assert result["events_stored"] == result["events_published"]
    # The bundle's bytes left the control plane once, as retained blobs the broker
    # served: no device asked the control plane for a chunk of it.
    assert result["delivery"] == "blobs"
    assert result["cp_payload"]["fetch_targets"] == 0
    assert result["bundle_length"] <= result["cp_payload"]["blobs"] < 2 * result["bundle_length"]
    # The broker baseline reached every subscriber.
    assert result["baseline_incomplete"] == 0 and result["baseline_s"] is not None
    devices = tmp_path / "fleet" / f"fleet-{DEVICES}" / "devices"
    assert len(list(devices.glob("dev-*/models/*/active.json"))) == DEVICES


def test_asyncio_devices_take_metadata_and_bundle_from_the_broker_and_ask_the_control_plane_nothing(
    tmp_path: Path,
) -> None:
    """``--sim async``: the simulator that fits 10,000 devices, on a handful."""
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--sim", "async", "--devices", str(DEVICES),
         "--events-per-device", "2", "--data-dir", str(tmp_path / "fleet"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    (result,) = json.loads(out.read_text())["results"]
    assert result["sim"] == "async"
    assert result["rollout_state"] == "complete" and result["cp_states"] == {"active": DEVICES}
    assert result["active"] == DEVICES and result["failed"] == {}
    # Neither metadata nor target bytes by request: both were retained on the broker.
    assert result["cp_payload"]["fetch_metadata"] == 0
    assert result["cp_payload"]["fetch_targets"] == 0
    assert result["cp_payload"]["metadata_retained"] > 0
    assert result["events_stored"] == result["events_published"] == DEVICES * 2
    assert set(result["api_latency_ms"]) <= {"rollout status", "device list"}
