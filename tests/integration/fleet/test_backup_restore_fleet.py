"""``edgefleet backup`` while the control plane runs, more signed and installed by a real
agent, then ``edgefleet restore``: the restored repository is already ahead of what the
agent trusts, and the agent installs the next bundle without any ``repo bump``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve, signed_versions
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
DEVICE = "dev-backup001"


def edgefleet(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.control_plane", *args],
        capture_output=True, text=True, env=os.environ, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_restored_backup_stays_ahead_of_the_agent_and_it_installs_the_next_bundle(
    tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel
) -> None:
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url, client_id="cp-backup")
    archive = tmp_path / "edgefleet-backup.tar"
    agent = None
    try:
        with serve(settings) as api:
            for version in ("1", "2", "3"):
                register_model(api, digits.onnx_bytes, digits.samples, version=version)
            first = build_bundle(api, "1", PROFILE)
            edgefleet("backup", str(archive), "--data-dir", str(settings.data_dir))  # live
            build_bundle(api, "2", PROFILE)  # signed after the backup
            config, _port = provision_agent(
                tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
            )
            agent = start_agent(config, tmp_path / "agent.log")
            wait_until(
                lambda: api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
                "the agent to come online",
            )
            assert roll_out(api, first["id"], DEVICE)["state"] == "complete"
            newest = signed_versions(api)

        out = edgefleet("restore", str(archive), "--data-dir", str(settings.data_dir))
        assert "re-signed" in out

        with serve(settings) as api:
            restored = signed_versions(api)
            for role in ("targets", "snapshot", "timestamp"):
                assert restored[role]["version"] > newest[role]["version"]
            assert [b["id"] for b in api.get("/api/v1/bundles").json()] == [first["id"]]
            third = build_bundle(api, "3", PROFILE)  # no repo bump needed
            done = roll_out(api, third["id"], DEVICE)
            assert done["state"] == "complete", done
            assert api.get(f"/api/v1/devices/{DEVICE}").json()["bundle_id"] == third["id"]
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
