"""Retraining hooks and the champion-challenger comparison.

A hook is how a fleet-level drift verdict turns into a new model version:

- ``command``: run locally with the request in environment variables
  (``EDGEFLEET_MODEL``, ``EDGEFLEET_VERSION`` — the drifted champion,
  ``EDGEFLEET_NEW_VERSION``, ``EDGEFLEET_OUTPUT_DIR``, ``EDGEFLEET_REQUEST_ID``).
  It must write ``model.onnx`` and ``samples.npy`` (float32 [n, features]; the new
  reference and calibration data) into the output directory, and may write
  ``holdout.npz`` (x, y). A non-zero exit or a missing file fails the request
  with the tail of its output.
- ``webhook``: a JSON POST of the same fields to a URL; the trainer behind it
  registers the new version through the API later. The request then waits.

The challenger replaces the champion only if it is at least as accurate on the
champion's fixed holdout (plus a margin), measured here, not taken from the hook.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import onnxruntime as ort

from control_plane.errors import BuildError, ControlPlaneError

logger = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 1800.0


class HookError(ControlPlaneError):
    """A retraining hook failed; the message carries what it printed or answered."""


@dataclass(frozen=True)
class RetrainHook:
    kind: Literal["command", "webhook"]
    target: str | list[str]  # argv for a command, URL for a webhook
    timeout_s: float = HOOK_TIMEOUT_S


@dataclass(frozen=True)
class RetrainContext:
    request_id: int
    model: str
    version: str
    new_version: str
    output_dir: Path


@dataclass(frozen=True)
class HookOutput:
    model_path: Path
    samples_path: Path
    holdout_path: Path | None


def run_hook(hook: RetrainHook, context: RetrainContext) -> HookOutput | None:
    """Run ``hook`` for ``context``: the produced files (command) or None (webhook)."""
    fields = {
        "EDGEFLEET_MODEL": context.model,
        "EDGEFLEET_VERSION": context.version,
        "EDGEFLEET_NEW_VERSION": context.new_version,
        "EDGEFLEET_OUTPUT_DIR": str(context.output_dir),
        "EDGEFLEET_REQUEST_ID": str(context.request_id),
    }
    if hook.kind == "webhook":
        payload = {k.removeprefix("EDGEFLEET_").lower(): v for k, v in fields.items()}
        try:
            response = httpx.post(str(hook.target), json=payload, timeout=30)
            response.raise_for_status()
        except httpx.HTTPError as e:
            raise HookError(f"webhook {hook.target} failed: {e}") from e
        logger.info("retraining webhook called request_id=%d", context.request_id)
        return None

    argv = hook.target if isinstance(hook.target, list) else [hook.target]
    context.output_dir.mkdir(parents=True, exist_ok=True)
    try:
        completed = subprocess.run(
            argv,
            env={**os.environ, **fields},
            capture_output=True,
            text=True,
            timeout=hook.timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HookError(f"retraining command {argv[0]} could not run: {e}") from e
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-10:]
        raise HookError(f"retraining command exited {completed.returncode}: " + " | ".join(tail))
    model_path = context.output_dir / "model.onnx"
    samples_path = context.output_dir / "samples.npy"
    for required in (model_path, samples_path):
        if not required.is_file():
            raise HookError(f"retraining command did not write {required.name}")
    holdout = context.output_dir / "holdout.npz"
    return HookOutput(model_path, samples_path, holdout if holdout.is_file() else None)


@dataclass(frozen=True)
class Comparison:
    champion_accuracy: float
    challenger_accuracy: float
    samples: int
    margin: float

    @property
    def challenger_wins(self) -> bool:
        return self.challenger_accuracy >= self.champion_accuracy + self.margin

    def describe(self) -> str:
        verdict = "wins" if self.challenger_wins else "loses"
        return (
            f"challenger {verdict}: accuracy {self.challenger_accuracy:.4f} vs champion "
            f"{self.champion_accuracy:.4f} on {self.samples} holdout samples (margin {self.margin})"
        )


def _accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs = session.run(None, {name: x.astype(np.float32)})
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise BuildError(f"model does not run for the comparison: {e}") from e
    labels = next((o for o in outputs if np.asarray(o).ndim == 1), None)
    if labels is None:
        labels = np.argmax(outputs[0], axis=1)
    return float(np.mean(np.asarray(labels) == y))


def compare_models(
    *,
    champion: bytes,
    challenger: bytes,
    holdout_x: np.ndarray,
    holdout_y: np.ndarray,
    margin: float = 0.0,
) -> Comparison:
    """Accuracy of both models on the same fixed holdout."""
    return Comparison(
        champion_accuracy=_accuracy(champion, holdout_x, holdout_y),
        challenger_accuracy=_accuracy(challenger, holdout_x, holdout_y),
        samples=len(holdout_y),
        margin=margin,
    )
