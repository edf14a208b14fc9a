"""The agent updates itself through a real rollout, under the real launcher.

One Mosquitto, one control plane and one ``edgefleet-agent-launcher`` process (with its
agent child) serve the whole module. Three agent versions: A is this checkout, as the
device has it installed; B is this code packed as a wheel with another version string;
C is B with an ``edgefleet.agent.__main__`` that crashes on start (it still imports, so
it passes the agent's smoke test and only the launcher can catch it).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import edgefleet
from edgefleet.agent import __version__ as VERSION_A
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.core.netutil import free_port, wait_for_port
from edgefleet.control_plane.core.settings import Settings
from tests.support.control_plane import serve
from tests.support.harness import provision_agent, roll_out
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-selfupd01"
VERSION_B = f"{VERSION_A}.post1"
VERSION_C = f"{VERSION_A}.post2"
CRASHING_MAIN = (
    "import sys\n"
    "print('simulated start-up crash of the new agent', file=sys.stderr, flush=True)\n"
    "raise SystemExit(3)\n"
)


def pack_agent_wheel(version: str, *, patches: dict[str, str] | None = None) -> tuple[str, bytes]:
    """This checkout's ``edgefleet`` package as a pure-Python wheel saying ``version``,
    with ``patches`` (path in the wheel -> new content) applied."""
    source = Path(edgefleet.__file__).parent
    init = "edgefleet/agent/__init__.py"
    files: dict[str, bytes] = {}
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(source.parent).as_posix()] = path.read_bytes()
    files[init] = files[init].replace(
        f'__version__ = "{VERSION_A}"'.encode(), f'__version__ = "{version}"'.encode()
    )
    for name, content in (patches or {}).items():
        files[name] = content.encode()
    info = f"edgefleet-{version}.dist-info"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: edgefleet\nVersion: {version}\n".encode()
    )
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = b""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return f"edgefleet-{version}-py3-none-any.whl", buffer.getvalue()


@dataclass
class Device:
    api: TestClient
    url: str  # the same app over HTTP, for the CLI
    launcher: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def status(self) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/devices/{DEVICE}").json())

    def release(self, version: str, wheel: tuple[str, bytes]) -> dict[str, Any]:
        response = self.api.post(
            "/api/v1/agent-releases",
            data={"version": version, "profile": PROFILE},
            files=[("wheels", wheel)],
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def running_version(self, version: str) -> dict[str, Any]:
        def online_as() -> dict[str, Any] | None:
            assert self.launcher.poll() is None, self.log.read_text()[-3000:]
            response = self.api.get(f"/api/v1/devices/{DEVICE}")
            status = response.json() if response.status_code == 200 else {}
            running = status.get("online") and status.get("agent_version") == version
            return status if running else None

        return wait_until(online_as, f"the device online as agent {version}", timeout=120)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    tmp = tmp_path_factory.mktemp("selfupdate")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    previous = os.environ.get("EDGEFLEET_API_AUTH")
    os.environ["EDGEFLEET_API_AUTH"] = "false"  # (module scope: monkeypatch is per test)
    try:
        with serve(Settings(data_dir=tmp / "cp", broker_url=broker.url)) as api:
            config, _port = provision_agent(
                tmp, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
            )
            log = tmp / "launcher.log"
            with log.open("ab") as out:
                launcher = subprocess.Popen(
                    [sys.executable, "-m", "edgefleet.agent.launcher", "--config", str(config),
                     "--handover-deadline", "120"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            port = free_port()
            # The TestClient ran the app's lifespan; uvicorn only adds HTTP for the CLI.
            server = uvicorn.Server(
                uvicorn.Config(api.app, port=port, lifespan="off", log_level="warning")
            )
            threading.Thread(target=server.run, daemon=True).start()
            try:
                assert wait_for_port("127.0.0.1", port, 30)
                found = Device(api=api, url=f"http://127.0.0.1:{port}", launcher=launcher,
                               data_dir=tmp / "agent", log=log)  # fmt: skip
                found.running_version(VERSION_A)
                yield found
            finally:
                server.should_exit = True
                launcher.send_signal(signal.SIGTERM)
                launcher.wait(60)
    finally:
        if previous is None:
            os.environ.pop("EDGEFLEET_API_AUTH", None)
        else:
            os.environ["EDGEFLEET_API_AUTH"] = previous
        broker.kill()


def test_agent_release_rolls_out_and_the_new_version_reports(
    device: Device, tmp_path: Path
) -> None:
    name, data = pack_agent_wheel(VERSION_B)
    (tmp_path / name).write_bytes(data)
    added = CliRunner().invoke(
        cli,
        ["agent-release", "add", str(tmp_path), "--version", VERSION_B, "--profile", PROFILE,
         "--api", device.url],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    [bundle] = [b for b in device.api.get("/api/v1/bundles").json()
                if b["model_version"] == VERSION_B]  # fmt: skip
    assert bundle["manifest"]["kind"] == "agent"
    assert bundle["id"] in added.output

    rollout = roll_out(device.api, bundle["id"], DEVICE)

    assert rollout["state"] == "complete", rollout
    assert [d["state"] for d in rollout["devices"]] == ["active"], rollout["devices"]
    device.running_version(VERSION_B)
    site = device.data_dir / "agent-versions" / VERSION_B / "site"
    assert (site / "edgefleet" / "agent" / "launcher.py").is_file()
    assert device.launcher.poll() is None


def test_crashing_release_is_undone_and_the_rollout_hears_why(device: Device) -> None:
    running = device.status()["agent_version"]  # B after the test above, else A
    wheel = pack_agent_wheel(VERSION_C, patches={"edgefleet/agent/__main__.py": CRASHING_MAIN})
    bundle = device.release(VERSION_C, wheel)

    rollout = roll_out(device.api, bundle["id"], DEVICE)

    [row] = rollout["devices"]
    assert row["state"] == "rolled_back", row
    assert "exited with code 3" in row["reason"], row
    assert "simulated start-up crash" in row["reason"], row
    device.running_version(running)
    assert device.launcher.poll() is None


def test_release_whose_code_says_another_version_is_refused(device: Device) -> None:
    name, data = pack_agent_wheel("9.9.9")
    response = device.api.post(
        "/api/v1/agent-releases",
        data={"version": "9.9.8", "profile": PROFILE},
        files=[("wheels", (name, data))],
    )
    assert response.status_code == 422, response.text
    assert "9.9.9" in response.json()["detail"]
