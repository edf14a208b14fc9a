"""The drift phase of ``edgefleet demo --drift``: the loop closing, step by step.

Runs after the spine demo has v1 active on every agent. The sensors of some devices
get brighter; their agents report drift; the fleet rule fires; the retraining hook
trains v2 on digits that include the brighter ones; v2 passes the gates and beats
v1 on the comparison; the canary rollout installs it; drift on those devices falls.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.text import Text

from edgefleet.control_plane.client import ApiClient
from edgefleet.drift import DEFAULT_WINDOW
from edgefleet.tensors import decode_tensor, encode_tensor
from edgefleet_demo.digits import DigitsModel
from edgefleet_demo.retrain_digits import shift_digits

SHIFT = 6.0
WINDOWS_PER_PHASE = 3
HOOK_NAME = "digits-shift"


def write_hooks_file(path: Path) -> None:
    """The demo's one retraining hook, as an admin would define it for the control plane.

    ``retrain_digits`` run by this Python, importing the same edgefleet code as the
    control plane (the hook inherits no environment, so ``PYTHONPATH`` is explicit).
    """
    package_root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "edgefleet_demo.retrain_digits", "--shift", str(SHIFT)]
    path.write_text(
        f"[hooks.{HOOK_NAME}]\n"
        f"command = {json.dumps(argv)}\n"
        f'description = "retrain digits on original and brighter digits"\n'
        f"env = {{ PYTHONPATH = {json.dumps(str(package_root))} }}\n"
    )


@dataclass
class DriftDemoResult:
    drifted_devices: list[str]
    request: dict[str, Any]
    share_before: float
    share_after: float
    accuracy_shifted_v1: dict[str, float] = field(default_factory=dict)
    accuracy_shifted_v2: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.request.get("state") == "rolled_out"
            and self.share_after < self.share_before
            and all(
                self.accuracy_shifted_v2[d] > self.accuracy_shifted_v1[d]
                for d in self.drifted_devices
            )
        )


def _infer(port: int, x: np.ndarray) -> tuple[str, np.ndarray]:
    labels, version = [], ""
    for start in range(0, len(x), 250):
        body = {"inputs": [encode_tensor("input", x[start : start + 250].astype(np.float32))]}
        response = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/digits/infer", json=body, timeout=30
        )
        response.raise_for_status()
        payload = response.json()
        version = str(payload["model_version"])
        labels.append(dict(decode_tensor(o) for o in payload["outputs"])["label"])
    return version, np.concatenate(labels)


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_drift_phase(
    *,
    api: ApiClient,
    console: Console,
    device_ports: dict[str, int],
    model: DigitsModel,
    timeout: float = 180.0,
) -> DriftDemoResult:
    def step(text: str) -> None:
        console.print(Text.assemble(("»", "bold magenta"), " ", text))

    rng = np.random.default_rng(7)
    n = DEFAULT_WINDOW * WINDOWS_PER_PHASE
    idx = rng.integers(0, len(model.holdout_x), n)
    familiar, labels = model.holdout_x[idx], model.holdout_y[idx]
    shifted = shift_digits(familiar, SHIFT)
    devices = sorted(device_ports)
    drifting = devices[: max(2, len(devices) - 1)] if len(devices) >= 2 else devices

    api.set_policy(
        "digits",
        {
            "retrain": "automatic",
            "hook": HOOK_NAME,
            "canary_device_count": 1,
            "drift_min_devices": min(2, len(drifting)),
        },
    )
    step(f"policy for digits: retrain automatically on fleet drift, hook = {HOOK_NAME}")

    result = DriftDemoResult(drifted_devices=drifting, request={}, share_before=0, share_after=0)
    for device in devices:
        _infer(device_ports[device], familiar)
    step(f"{len(devices)} devices served {n} familiar digits each: drift windows stay clean")

    for device in drifting:
        _version, predicted = _infer(device_ports[device], shifted)
        result.accuracy_shifted_v1[device] = float(np.mean(predicted == labels))
    for device in set(devices) - set(drifting):
        _infer(device_ports[device], familiar)
    worst = min(result.accuracy_shifted_v1.values())
    step(
        f"the sensors of {', '.join(drifting)} got brighter (+{SHIFT:g} per pixel): "
        f"v1 accuracy on their inputs fell to {worst:.3f}"
    )

    verdict = _wait(
        lambda: next((v for v in api.drift_status(model="digits") if v["fires"]), None),
        timeout,
        "the fleet drift rule to fire",
    )
    result.share_before = float(verdict["share"])
    step(
        f"fleet drift rule fired for digits v{verdict['model_version']} in {verdict['cohort']}: "
        f"{len(verdict['devices_drifted'])} of {verdict['devices_reporting']} devices drifted"
    )

    def finished_request() -> dict[str, Any] | None:
        rows = [r for r in api.list_retraining() if r["trigger"] == "drift"]
        done = [r for r in rows if r["state"] not in ("pending_approval", "approved", "running")]
        return done[0] if done else None

    request = _wait(finished_request, timeout, "the retraining request to finish")
    result.request = request
    step(f"retraining request {request['id']}: {request['state']} — {request['reason']}")
    if request["state"] != "rolled_out":
        return result

    rollout_id = request["rollout_id"]

    def canary_finished() -> dict[str, Any] | None:
        # The devices keep serving while the canary soaks: its gates need that telemetry.
        for device in drifting:
            _infer(device_ports[device], shifted[:50])
        rollout = api.get_rollout(rollout_id)
        return rollout if rollout["state"] not in ("in_progress", "paused") else None

    rollout = _wait(canary_finished, timeout, f"canary rollout {rollout_id} to finish")
    step(f"canary rollout {rollout_id} of {rollout['bundle_id']}: {rollout['state']}")

    before = {p["device_id"]: p for p in api.drift_series(model="digits")}
    for device in drifting:
        version, predicted = _infer(device_ports[device], shifted)
        if version != request["new_version"]:
            raise RuntimeError(f"{device} serves v{version} after the rollout, not v2")
        result.accuracy_shifted_v2[device] = float(np.mean(predicted == labels))
    series = _wait(
        lambda: (
            [
                p
                for p in api.drift_series(model="digits", version=request["new_version"])
                if p["device_id"] in drifting
            ]
            or None
        ),
        timeout,
        "drift windows from v2",
    )
    result.share_after = float(np.mean([p["share_drifted"] for p in series]))
    shares_v1 = [before[d]["share_drifted"] for d in drifting if d in before]
    result.share_before = float(np.mean(shares_v1)) if shares_v1 else result.share_before
    step(
        f"drift fell: share of drifted features {result.share_before:.2f} on v1 -> "
        f"{result.share_after:.2f} on v{request['new_version']}; accuracy on the brighter "
        f"digits {worst:.3f} -> {min(result.accuracy_shifted_v2.values()):.3f}"
    )
    return result
