"""The spool is a buffer, never a single point of failure: a real agent process whose
spool is garbage at start-up starts and serves anyway, and one whose spool is deleted
while it runs notices and recreates it; both say so in telemetry, and the status the
agent publishes carries the real spool depth."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.netutil import free_port
from tests.support.harness import start_agent
from tests.support.polling import wait_until
from tests.support.receipting import ReceiptingPlane

DEVICE = "dev-spoolfault01"


@pytest.fixture
def plane(broker: MosquittoBroker) -> Iterator[ReceiptingPlane]:
    instance = ReceiptingPlane(broker.address).start()
    yield instance
    instance.stop()


def write_config(tmp: Path, broker: MosquittoBroker) -> tuple[Path, int]:
    root = tmp / "root.json"
    root.write_text("{}")  # never read: no offer reaches this agent
    port = free_port()
    config = tmp / "agent.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\nprofile = "x86-64-gateway-onnx"\n'
        f'broker = "{broker.url}"\ndata_dir = "{tmp / "agent"}"\ntrust_root = "{root}"\n'
        f"[inference]\nport = {port}\n[telemetry]\nwindow_s = 0.2\n"
    )
    return config, port


def status_file(tmp: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((tmp / "agent" / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def spool_errors(plane: ReceiptingPlane) -> list[dict[str, Any]]:
    return [e.data for e in plane.events("error") if e.data.get("where") == "spool"]


def test_agent_with_a_corrupt_spool_starts_serves_and_recreates_it(
    tmp_path: Path, broker: MosquittoBroker, plane: ReceiptingPlane
) -> None:
    config, port = write_config(tmp_path, broker)
    spool = tmp_path / "agent" / "spool.sqlite"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(os.urandom(64 * 1024))  # garbage where the SQLite header should be
    process = start_agent(config, tmp_path / "agent.log")
    try:
        wait_until(lambda: live(port) or process.poll() is not None, "the endpoint to answer", 60)
        assert process.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
        assert list(spool.parent.glob("spool.sqlite.corrupt-*"))
        errors = wait_until(lambda: spool_errors(plane), "the spool error event")
        assert "cannot open spool" in errors[0]["reason"]
        assert errors[0]["moved_to"].startswith("spool.sqlite.corrupt-")

        # Deleted under the running agent: noticed, recreated, said so, depth is real.
        wait_until(lambda: status_file(tmp_path).get("link") == "connected", "the link")
        spool.unlink()
        wait_until(lambda: spool.exists(), "the spool to be recreated")
        wait_until(lambda: len(spool_errors(plane)) >= 2, "the second spool error event")
        assert "deleted" in spool_errors(plane)[-1]["reason"]
        assert live(port)
        wait_until(lambda: status_file(tmp_path).get("spool_recreated") == 2, "status.json")
        depths = [s.get("spool_depth") for s in plane.statuses if s.get("online")]
        assert depths and all(isinstance(d, int) for d in depths)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0
