"""Schemathesis against the running control plane: no request may produce a 5xx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.netutil import free_port, wait_for_port

pytestmark = pytest.mark.integration


def test_generated_requests_never_cause_a_server_error(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is part of the dev extra"
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.control_plane",
            "serve",
            "--port",
            str(port),
            "--broker",
            broker.url,
            "--data-dir",
            str(tmp_path / "cp"),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
        env={**os.environ, "EDGEFLEET_API_AUTH": "false"},
    )
    try:
        assert wait_for_port("127.0.0.1", port, 30)
        httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10).raise_for_status()
        run = subprocess.run(
            [
                st,
                "run",
                f"http://127.0.0.1:{port}/api/v1/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "15",
                "--seed",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert run.returncode == 0, run.stdout[-4000:]
        assert "generated" in run.stdout
    finally:
        server.terminate()
        server.wait(15)
