"""Model runtimes behind one small interface, and the holder the server reads from.

The inference server and the installer only see ``ModelRuntime``; which library
runs the model is chosen from the bundle manifest's ``runtime.name``. Runtime
libraries are imported lazily so that a device installs only the one it uses.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.errors import RuntimeLoadError
from edgefleet.bundle import Manifest
from edgefleet.tensors import ModelSignature

logger = logging.getLogger(__name__)

# KServe names for the model platform reported in model metadata.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx"}


class ModelRuntime(Protocol):
    """A loaded model that can run inference; must be safe to call from many threads."""

    @property
    def signature(self) -> ModelSignature: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRuntime:
    """An onnxruntime ``InferenceSession`` (thread-safe ``run``) for one model file."""

    def __init__(self, model_path: Path, signature: ModelSignature) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeLoadError("onnxruntime is not installed on this device") from e
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors for bad models
            raise RuntimeLoadError(f"onnxruntime cannot load {model_path.name}: {e}") from e
        have_inputs = {i.name for i in self._session.get_inputs()}
        have_outputs = [o.name for o in self._session.get_outputs()]
        want_inputs = {spec.name for spec in signature.inputs}
        if have_inputs != want_inputs:
            raise RuntimeLoadError(
                f"model inputs {sorted(have_inputs)} differ from the manifest's "
                f"{sorted(want_inputs)}"
            )
        missing = [s.name for s in signature.outputs if s.name not in have_outputs]
        if missing:
            raise RuntimeLoadError(f"model has no output {missing[0]!r} named in the manifest")
        self._signature = signature
        self._output_names = [spec.name for spec in signature.outputs]

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, feeds)
        return {
            name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)
        }


def load_runtime(manifest: Manifest, slot_dir: Path) -> ModelRuntime:
    """Load the model of the bundle unpacked in ``slot_dir`` with the runtime it names."""
    name = manifest.runtime.name
    model_path = Path(slot_dir) / manifest.artifact
    if name == "onnxruntime":
        return OnnxRuntime(model_path, manifest.signature)
    raise RuntimeLoadError(f"runtime {name!r} is not supported by this agent (onnxruntime only)")


@dataclass(frozen=True)
class ActiveModel:
    """The model being served and what the endpoint says about it."""

    name: str
    version: str
    platform: str
    runtime: ModelRuntime
    bundle_id: str = ""
    release: int = 0

    @classmethod
    def from_manifest(cls, manifest: Manifest, runtime: ModelRuntime) -> ActiveModel:
        return cls(
            name=manifest.model.name,
            version=manifest.model.version,
            platform=PLATFORMS.get(manifest.runtime.name, manifest.runtime.name),
            runtime=runtime,
            bundle_id=manifest.bundle_id,
            release=manifest.release,
        )


class ModelHolder:
    """The one place the current model lives; swapping it is a single assignment.

    Requests take a reference with ``current()`` and keep using it, so a request
    in flight finishes on the old model while new ones get the new model.
    """

    def __init__(self, model: ActiveModel | None = None) -> None:
        self._lock = threading.Lock()
        self._model = model

    def current(self) -> ActiveModel | None:
        with self._lock:
            return self._model

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        """Serve ``model`` from now on; returns the one it replaced."""
        with self._lock:
            previous, self._model = self._model, model
        return previous
