"""A repository restored from an older backup, with a real agent that trusts newer metadata.

The control plane's database is backed up, more is signed, the agent installs (and so
trusts the newer versions), then the database is restored from the backup. The agent
reports what it trusts in its status; the control plane refuses to sign below it,
``edgefleet repo bump`` re-signs past it, and the agent installs again.
"""

from __future__ import annotations

import os
import sqlite3
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
DEVICE = "dev-restore001"


def backup_database(path: Path, to: Path) -> None:
    live, copy = sqlite3.connect(path), sqlite3.connect(to)
    try:
        live.backup(copy)
    finally:
        live.close()
        copy.close()


def test_restored_repository_refuses_to_sign_below_the_fleet_until_bumped(
    tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel
) -> None:
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url, client_id="cp-restore")
    database = tmp_path / "cp" / "control-plane.db"
    backup = tmp_path / "backup.db"
    agent = None
    try:
        with serve(settings) as api:
            for version in ("1", "2", "3"):
                register_model(api, digits.onnx_bytes, digits.samples, version=version)
            first = build_bundle(api, "1", PROFILE)
            build_bundle(api, "2", PROFILE)
            backup_database(database, backup)
            build_bundle(api, "3", PROFILE)  # signed after the backup
            config, _port = provision_agent(
                tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
            )
            agent = start_agent(config, tmp_path / "agent.log")
            wait_until(
                lambda: api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
                "the agent to come online",
            )
            assert roll_out(api, first["id"], DEVICE)["state"] == "complete"
            # The agent now trusts the newest versions, and says so in its status.
            newest = signed_versions(api)
            wait_until(
                lambda: (
                    signed_versions(api)["targets"]["device_trusts"] == newest["targets"]["version"]
                ),
                "the agent to report the targets version it trusts",
            )

        database.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        backup.rename(database)

        with serve(settings) as api:
            restored = signed_versions(api)
            assert restored["targets"]["version"] < newest["targets"]["version"]
            wait_until(  # the agent's retained status, with what it trusts
                lambda: (
                    (v := signed_versions(api)["targets"])["device_trusts"] is not None
                    and v["device_trusts"] > v["version"]
                ),
                "the control plane to see it is behind what the agent trusts",
            )
            response = api.post(
                "/api/v1/bundles", json={"model": "digits", "version": "3", "profile": PROFILE}
            )
            assert response.status_code == 422, response.text
            assert "edgefleet repo bump" in response.json()["detail"]
            assert DEVICE in response.json()["detail"]

            bump = subprocess.run(
                [sys.executable, "-m", "edgefleet.control_plane", "repo", "bump", "--data-dir",
                 str(settings.data_dir)],
                capture_output=True, text=True, env=os.environ, timeout=120,
            )  # fmt: skip
            assert bump.returncode == 0, bump.stdout + bump.stderr
            bumped = signed_versions(api)
            for role in ("targets", "snapshot", "timestamp"):
                assert bumped[role]["version"] > newest[role]["version"]

            third = build_bundle(api, "3", PROFILE)
            done = roll_out(api, third["id"], DEVICE)
            assert done["state"] == "complete", done
            assert api.get(f"/api/v1/devices/{DEVICE}").json()["bundle_id"] == third["id"]
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
