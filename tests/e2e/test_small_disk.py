"""One disk budget and garbage collection, on a real agent process whose data dir is a
real 8 MiB filesystem (a tmpfs), behind a real Mosquitto and the control plane app.

The budget (64 MiB) is larger than the disk, as on a device whose storage is shared
with other software: the filesystem's free space is what binds. One agent for the
module, release 1 installed; a file written beside the agent fills the disk: release 2
is refused before its download with the reason, release 1 keeps answering, the spool's
cap comes down, and ``edgefleet-agent status`` shows the usage per use. Once the file is
gone release 2 installs (both slots full), and garbage collection removes orphans but
neither slot. The tests run in this order on the one agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.hot_swap import infer_body, served_version
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
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
from tests.support.small_disk import fill, mounted_tmpfs

pytestmark = pytest.mark.e2e

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-smalldisk01"
MIB = 2**20
DISK = """[probation]
seconds = 0
[logs]
max_kib = 256
[disk]
budget_mb = 64
reserve_mb = 1
gc_interval_s = 1
watch_interval_s = 0.5
part_grace_s = 60
[disk.shares]
spool = 0.3
"""


@dataclass
class Rig:
    api: TestClient
    config: Path
    data_dir: Path
    port: int
    body: bytes
    bundles: dict[str, dict[str, Any]]
    process: subprocess.Popen[bytes]

    def slots(self) -> dict[str, str]:
        """Every file of the model's two slots with its SHA-256."""
        root = self.data_dir / "models" / "digits" / "slots"
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    def status_file(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def status(self) -> str:
        """``edgefleet-agent status`` as an operator runs it."""
        done = subprocess.run(
            [sys.executable, "-m", "edgefleet.agent", "status", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, digits: DigitsModel) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("smalldisk")
    tmp.chmod(0o711)
    with mounted_tmpfs(tmp / "agent", 8) as data_dir:
        broker = MosquittoBroker(tmp / "broker")
        broker.start()
        process = None
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("EDGEFLEET_API_AUTH", "false")
                app = create_app(Settings(data_dir=tmp / "cp", broker_url=broker.url))
                with TestClient(app) as api:
                    bundles = {}
                    for version in ("1", "2"):
                        register_model(api, digits.onnx_bytes, digits.samples, version=version)
                        bundles[version] = build_bundle(api, version, PROFILE)
                    config, port = provision_agent(
                        tmp, api, broker=broker.url, device_id=DEVICE, profile=PROFILE, extra=DISK
                    )
                    process = start_agent(config, tmp / "agent.log")
                    wait_until(
                        lambda: api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
                        "the agent's status",
                    )
                    rollout = roll_out(api, bundles["1"]["id"], DEVICE)
                    assert rollout["state"] == "complete", rollout
                    yield Rig(
                        api=api,
                        config=config,
                        data_dir=data_dir,
                        port=port,
                        body=infer_body(digits.holdout_x[:1]),
                        bundles=bundles,
                        process=process,
                    )
        finally:
            stop_agent(process)
            broker.kill()


def test_a_full_disk_refuses_a_bundle_before_download_and_the_old_model_keeps_serving(
    rig: Rig,
) -> None:
    # The cap after the disk worker's first watch (its usage is in the status then): on
    # this 8 MiB disk the watch may already hold the cap under the configured one.
    spool_cap = wait_until(
        lambda: (
            (disk := rig.status_file().get("disk", {})).get("free_bytes") is not None
            and disk["spool_cap_bytes"]
        ),
        "the disk worker's first watch",
    )
    slots = rig.slots()
    filler = fill(rig.data_dir, leave_free=512 * 1024)  # below the 1 MiB reserve
    try:
        lowered = wait_until(
            lambda: (cap := rig.status_file()["disk"]["spool_cap_bytes"]) < spool_cap and cap,
            "the spool's cap to come down",
        )
        rollout = roll_out(rig.api, rig.bundles["2"]["id"], DEVICE)

        assert rollout["state"] != "complete"
        journal = json.loads((rig.data_dir / "models/digits/journal.json").read_text())
        assert journal["bundle_id"] == rig.bundles["2"]["id"] and journal["state"] == "failed"
        assert "[disk] reserve_mb" in journal["reason"], journal["reason"]
        assert "filesystem has" in journal["reason"]
        assert served_version(rig.port, "digits", rig.body) == "1"
        assert rig.slots() == slots  # refused before the download: no slot touched
        assert not list((rig.data_dir / "downloads").rglob("*.part"))
        status = rig.status()
        assert "disk.slots:" in status and "disk.spool:" in status and "disk.other:" in status
        assert "disk.spool_cap:" in status and "kept free" in status
        assert rig.process.poll() is None
    finally:
        filler.unlink()

    try:
        wait_until(
            lambda: rig.status_file()["disk"]["spool_cap_bytes"] > lowered,
            "the spool's cap to come back up",
            timeout=120,
        )
    except AssertionError as e:  # say what the agent saw, not only that it was slow
        status = rig.status_file()
        log = (rig.config.parent / "agent.log").read_text(errors="replace").splitlines()
        raise AssertionError(
            f"{e}; lowered to {lowered}; disk {status.get('disk')}; "
            f"workers {status.get('workers')}; agent log tail: {log[-25:]}"
        ) from e
    assert roll_out(rig.api, rig.bundles["2"]["id"], DEVICE)["state"] == "complete"
    assert served_version(rig.port, "digits", rig.body) == "2"


def test_gc_removes_orphaned_parts_and_old_metadata_but_never_the_two_slots(rig: Rig) -> None:
    slots = rig.slots()
    assert {name.split("/")[0] for name in slots} == {"a", "b"}  # active and rollback
    old = 1_000_000_000.0
    orphans = [
        rig.data_dir / "downloads" / "parts" / "0badc0de.digits-9.tar.part",
        rig.data_dir / "downloads" / "digits-8.tar",
        rig.data_dir / "tuf" / "metadata" / "root_history" / "0.root.json",
    ]
    for path in orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 4096)
        os.utime(path, (old, old))

    wait_until(lambda: not any(p.exists() for p in orphans), "gc to remove the orphans")

    assert rig.slots() == slots
    assert served_version(rig.port, "digits", rig.body) == "2"
    assert (rig.data_dir / "tuf" / "metadata" / "root.json").exists()
    assert rig.status_file()["workers"]["disk"]["running"] is True
