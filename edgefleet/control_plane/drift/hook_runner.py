"""Running retraining hooks, and the champion-challenger comparison.

A hook is how a fleet-level drift verdict turns into a new model version. Hooks are
defined by an admin in the control plane's configuration
(``edgefleet.control_plane.drift.hook_config``);
a model's policy selects one by name. Each run is kept away from the control plane's
own secrets:

- ``command``: the argv runs without a shell, in a fresh working directory outside
  the data directory, with a clean environment: ``PATH`` (``HOOK_PATH``), ``HOME``
  and ``TMPDIR`` (the working directory), ``LANG``, the hook's own ``env`` from its
  definition, and the request: ``EDGEFLEET_MODEL``, ``EDGEFLEET_VERSION`` (the
  drifted champion), ``EDGEFLEET_NEW_VERSION``, ``EDGEFLEET_OUTPUT_DIR``,
  ``EDGEFLEET_REQUEST_ID``, and ``EDGEFLEET_FIELD_DATA_DIR``: what the devices
  running the drifted version saw, written for the hook
  (``edgefleet.control_plane.services.field_data.write_field_data``: ``inputs.npy``
  float32 [n, features], ``outputs.npy`` the devices' answers and ``labels.npy`` the
  true labels, int64 [n] with -1 where not known, and ``manifest.json``; no rows when
  devices sent none). Nothing else of the control plane's environment (its
  token, key passphrase, database URL) is passed on. It must write ``model.onnx``
  and ``samples.npy`` (float32 [n, features]; the new reference and calibration
  data) into the output directory, and may write ``holdout.npz`` (x, y). Its output
  (stdout and stderr together) is kept up to ``OUTPUT_LIMIT`` bytes, its last part;
  past ``timeout_s`` its whole process group is killed, and so is anything it left
  running when it exits. A non-zero exit or a missing file fails the request.
- ``webhook``: a JSON POST of the request fields (without the output directory; the
  field data as ``field_data``, the API path that lists it) to the configured URL,
  redirects not followed; the trainer behind it registers the new version through the
  API later. The request then waits.

The challenger replaces the champion only if it is at least as accurate on the
champion's fixed holdout (plus a margin), measured here, not taken from the hook.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

import httpx
import numpy as np
import onnxruntime as ort

from edgefleet.control_plane.core.errors import BuildError, ControlPlaneError
from edgefleet.control_plane.drift.hook_config import RetrainHookSpec

logger = logging.getLogger(__name__)

HOOK_PATH = "/usr/local/bin:/usr/bin:/bin"
OUTPUT_LIMIT = 16 * 1024
WEBHOOK_TIMEOUT_S = 30.0


class HookError(ControlPlaneError):
    """A retraining hook failed; ``output`` is what it printed or answered (bounded)."""

    def __init__(self, message: str, *, output: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.output = output
        self.exit_code = exit_code


@dataclass(frozen=True)
class RetrainContext:
    request_id: int
    model: str
    version: str
    new_version: str
    output_dir: Path
    field_data_dir: Path | None = None


@dataclass(frozen=True)
class HookOutput:
    """What a hook produced: the files of a command (None for a webhook) and its output."""

    model_path: Path | None
    samples_path: Path | None
    holdout_path: Path | None
    output: str
    exit_code: int | None = None


class _Tail:
    """Reads a pipe to its end, keeping only the last ``limit`` bytes."""

    def __init__(self, stream: IO[bytes], limit: int = OUTPUT_LIMIT) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()
        self.total = 0
        self._thread = threading.Thread(target=self._read, name="hook-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._stream.read1(65536):  # type: ignore[attr-defined]
            self.total += len(chunk)
            self._buffer += chunk
            if len(self._buffer) > self._limit:
                del self._buffer[: len(self._buffer) - self._limit]

    def text(self, join_timeout: float = 5.0) -> str:
        self._thread.join(join_timeout)
        dropped = self.total - len(self._buffer)
        text = bytes(self._buffer).decode("utf-8", errors="replace")
        return (f"[{dropped} earlier bytes dropped]\n" if dropped > 0 else "") + text


def _context_fields(context: RetrainContext) -> dict[str, str]:
    fields = {
        "EDGEFLEET_MODEL": context.model,
        "EDGEFLEET_VERSION": context.version,
        "EDGEFLEET_NEW_VERSION": context.new_version,
        "EDGEFLEET_OUTPUT_DIR": str(context.output_dir),
        "EDGEFLEET_REQUEST_ID": str(context.request_id),
    }
    if context.field_data_dir is not None:
        fields["EDGEFLEET_FIELD_DATA_DIR"] = str(context.field_data_dir)
    return fields


def hook_environment(
    spec: RetrainHookSpec, context: RetrainContext, workspace: Path
) -> dict[str, str]:
    """The whole environment a command hook gets; nothing is inherited."""
    return {
        "PATH": HOOK_PATH,
        "HOME": str(workspace),
        "TMPDIR": str(workspace),
        "LANG": "C.UTF-8",
        **spec.env,
        **_context_fields(context),
    }


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_hook(
    spec: RetrainHookSpec, context: RetrainContext, *, workspace: Path, name: str = "hook"
) -> HookOutput:
    """Run ``spec`` for ``context`` with ``workspace`` as its working directory.

    ``workspace`` is a fresh directory outside the data directory that the caller
    removes afterwards; ``context.output_dir`` lies inside it.
    """
    if spec.webhook is not None:
        return _call_webhook(spec, context, name)
    assert spec.command is not None
    context.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            spec.command,
            cwd=workspace,
            env=hook_environment(spec, context, workspace),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills all of it
            close_fds=True,
        )
    except OSError as e:
        raise HookError(f"retraining hook {name} could not start: {e}") from e
    assert process.stdout is not None
    tail = _Tail(process.stdout)
    try:
        exit_code = process.wait(timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.wait()
        raise HookError(
            f"retraining hook {name} timed out after {spec.timeout_s:g} s and was killed",
            output=tail.text(),
        ) from None
    finally:
        _kill_group(process)  # whatever it left running in its group
        output = tail.text()
        process.stdout.close()
    logger.info(
        "retraining hook finished request_id=%d hook=%s exit_code=%d seconds=%.1f",
        context.request_id,
        name,
        exit_code,
        time.monotonic() - started,
    )
    if exit_code != 0:
        last = " | ".join(output.strip().splitlines()[-10:])
        raise HookError(
            f"retraining hook {name} exited {exit_code}: {last}",
            output=output,
            exit_code=exit_code,
        )
    model_path = context.output_dir / "model.onnx"
    samples_path = context.output_dir / "samples.npy"
    for required in (model_path, samples_path):
        if not required.is_file():
            raise HookError(
                f"retraining hook {name} did not write {required.name}",
                output=output,
                exit_code=exit_code,
            )
    holdout = context.output_dir / "holdout.npz"
    return HookOutput(
        model_path,
        samples_path,
        holdout if holdout.is_file() else None,
        output=output,
        exit_code=exit_code,
    )


def _call_webhook(spec: RetrainHookSpec, context: RetrainContext, name: str) -> HookOutput:
    fields = _context_fields(context)
    del fields["EDGEFLEET_OUTPUT_DIR"]  # a path on this host means nothing to a trainer
    fields.pop("EDGEFLEET_FIELD_DATA_DIR", None)
    payload = {k.removeprefix("EDGEFLEET_").lower(): v for k, v in fields.items()}
    payload["field_data"] = (
        f"/api/v1/models/{quote(context.model, safe='')}/field-data"
        f"?version={quote(context.version, safe='')}"
    )
    timeout = min(WEBHOOK_TIMEOUT_S, spec.timeout_s)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("POST", str(spec.webhook), json=payload) as response,
        ):
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk[: OUTPUT_LIMIT - len(body)]
                if len(body) >= OUTPUT_LIMIT:
                    break
            output = f"HTTP {response.status_code}\n" + body.decode("utf-8", "replace")
            if response.status_code >= 300:
                raise HookError(
                    f"retraining webhook {name} answered HTTP {response.status_code}",
                    output=output,
                )
    except httpx.HTTPError as e:
        # The message names the hook, never the URL (it may carry a credential).
        raise HookError(f"retraining webhook {name} failed: {type(e).__name__}") from e
    logger.info("retraining webhook called request_id=%d hook=%s", context.request_id, name)
    return HookOutput(None, None, None, output=output)


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
