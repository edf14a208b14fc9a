"""What many tests need and must do the same way: registering the digits model,
provisioning and starting an agent, building a bundle and rolling it out through a
control plane, collecting what an MQTT link receives."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.mqtt import Incoming
from edgefleet_demo.spine import write_agent_config
from tests.support.polling import wait_until


def register_model(
    api: Any, model: bytes, samples: np.ndarray, *, version: str, name: str = "digits"
) -> dict[str, Any]:
    """POST a model version with its representative samples (``/api/v1/models``)."""
    buffer = io.BytesIO()
    np.save(buffer, samples, allow_pickle=False)
    response = api.post(
        "/api/v1/models",
        data={"name": name, "version": version},
        files={"model": ("m.onnx", model), "samples": ("s.npy", buffer.getvalue())},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def provision_agent(
    tmp: Path, api: Any, *, broker: str, device_id: str, profile: str, extra: str = ""
) -> tuple[Path, int]:
    """What one agent needs under ``tmp``: the control plane's trust root (``root.json``)
    and ``agent.toml`` (data in ``tmp/agent``, endpoint on a free port, ``extra`` TOML
    appended). Returns (config path, endpoint port)."""
    root = tmp / "root.json"
    root.write_bytes(api.get("/api/v1/trust/root").content)
    config = tmp / "agent.toml"
    port = write_agent_config(
        config,
        device_id=device_id,
        profile=profile,
        broker=broker,
        data_dir=tmp / "agent",
        trust_root=root,
        extra=extra,
    )
    return config, port


def start_agent(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``edgefleet-agent run --config`` as its own OS process, output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )


def stop_agent(process: subprocess.Popen[bytes] | None) -> None:
    """Stop an agent ``start_agent`` started as its operator would (SIGTERM, then wait)."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def build_bundle(api: Any, version: str, profile: str, *, model: str = "digits") -> dict[str, Any]:
    """POST ``/api/v1/bundles``: build and sign ``model`` ``version`` for ``profile``."""
    response = api.post(
        "/api/v1/bundles", json={"model": model, "version": version, "profile": profile}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def roll_out(api: Any, bundle_id: str, device_id: str) -> dict[str, Any]:
    """Roll ``bundle_id`` out to one device and wait until the rollout has ended."""
    response = api.post(
        "/api/v1/rollouts", json={"bundle_id": bundle_id, "device_ids": [device_id]}
    )
    assert response.status_code == 201, response.text
    url = f"/api/v1/rollouts/{response.json()['id']}"

    def finished() -> dict[str, Any] | None:
        rollout = api.get(url).json()
        return rollout if rollout["state"] != "in_progress" else None

    return dict(wait_until(finished, f"rollout of {bundle_id} to finish"))


@dataclass
class Inbox:
    """What one MQTT link received, in arrival order (a thread-safe subscription handler)."""

    messages: list[Incoming] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, message: Incoming) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def topics(self) -> set[str]:
        with self._lock:
            return {m.topic for m in self.messages}

    def wait_for_payload(self, topic: str, payload: bytes) -> None:
        wait_until(lambda: payload in self.on(topic), f"{payload!r} on {topic}")
