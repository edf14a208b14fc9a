"""Model runtimes behind one small interface, and the holder the server reads from.

The inference server and the installer only see ``ModelRuntime``; which library
runs the model is chosen from the bundle manifest's ``runtime.name``. Runtime
libraries are imported lazily so that a device installs only the one it uses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.errors import RuntimeLoadError
from edgefleet.bundle import Manifest
from edgefleet.tensors import ModelSignature, run_in_batches

logger = logging.getLogger(__name__)

# KServe names for the model platform reported in model metadata.
PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "ai-edge-litert": "tensorflow_lite",
    "tflite-runtime": "tensorflow_lite",
}


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
        want_inputs = {spec.name for spec in signature.inputs}
        if have_inputs != want_inputs:
            raise RuntimeLoadError(
                f"model inputs {sorted(have_inputs)} differ from the manifest's "
                f"{sorted(want_inputs)}"
            )
        output_types = {o.name: str(o.type) for o in self._session.get_outputs()}
        for spec in signature.outputs:
            if spec.name not in output_types:
                raise RuntimeLoadError(f"model has no output {spec.name!r} named in the manifest")
            if not output_types[spec.name].startswith("tensor("):
                raise RuntimeLoadError(f"model output {spec.name!r} is not a tensor")
        self._signature = signature
        self._output_names = [spec.name for spec in signature.outputs]
        self._run = _session_binding(self._session)

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._signature.batch is not None:
            return run_in_batches(self._infer, feeds, self._signature)
        return self._infer(feeds)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Every output was checked to be a tensor at load, so onnxruntime hands back
        # ndarrays as they are: no per-call conversion on the hot path.
        return dict(
            zip(self._output_names, self._run(self._output_names, feeds, None), strict=True)
        )


def _session_binding(session: Any) -> Callable[[list[str], dict[str, np.ndarray], None], list[Any]]:
    """The compiled session's ``run``, skipping ``InferenceSession.run``'s Python checks.

    ``InferenceSession.run`` re-checks the feed in Python on every call (onnxruntime
    1.32: three checks, about a fifth of a 16 µs digits call). Feeds reaching a
    runtime were already checked against the signature (names, dtypes, shapes: the
    endpoint, the smoke test's manifest) and the compiled session checks them again,
    so the agent calls the binding those checks guard. An onnxruntime without it
    gets the public ``run`` (``tests/unit/agent/test_server.py`` pins which one runs).
    """
    binding = getattr(session, "_sess", None)
    if binding is not None and callable(getattr(binding, "run", None)):
        return binding.run
    return lambda names, feeds, _options: session.run(names, feeds)


@dataclass(frozen=True)
class BoundaryQuantization:
    """``q = round(x / scale) + zero_point`` for one integer model input or output."""

    dtype: str
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        info = np.iinfo(np.dtype(self.dtype))
        values = np.round(x / self.scale) + self.zero_point
        return np.clip(values, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def _boundary_from_manifest(manifest: Manifest) -> dict[str, BoundaryQuantization]:
    raw = manifest.quantization or {}
    try:
        return {
            str(name): BoundaryQuantization(
                dtype=str(p["dtype"]), scale=float(p["scale"]), zero_point=int(p["zero_point"])
            )
            for name, p in raw.items()
        }
    except (KeyError, TypeError, ValueError) as e:
        raise RuntimeLoadError(f"manifest quantization is malformed: {e}") from e


def _tflite_interpreter_class(runtime_name: str) -> Any:
    """ai-edge-litert's Interpreter, or tflite-runtime's where the profile pins it."""
    try:
        if runtime_name == "tflite-runtime":
            from tflite_runtime.interpreter import Interpreter
        else:
            from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise RuntimeLoadError(f"{runtime_name} is not installed on this device") from e
    return Interpreter


class TfliteRuntime:
    """A TFLite interpreter for one model file, behind the same interface as onnxruntime.

    Integer-boundary models (static int8) get float inputs quantized and integer
    outputs dequantized with the manifest's scale and zero-point, so clients always
    exchange the float tensors of the signature. Rows run one at a time, the batch
    size the bundle was gated at; an interpreter is not thread-safe, hence the lock.
    """

    def __init__(
        self,
        model_path: Path,
        signature: ModelSignature,
        *,
        runtime_name: str = "ai-edge-litert",
        boundary: dict[str, BoundaryQuantization] | None = None,
    ) -> None:
        interpreter_class = _tflite_interpreter_class(runtime_name)
        try:
            self._interpreter: Any = interpreter_class(model_path=str(model_path), num_threads=1)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise RuntimeLoadError(f"{runtime_name} cannot load {model_path.name}: {e}") from e
        inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        want_inputs = {spec.name for spec in signature.inputs}
        if set(inputs) != want_inputs:
            raise RuntimeLoadError(
                f"model inputs {sorted(inputs)} differ from the manifest's {sorted(want_inputs)}"
            )
        missing = [s.name for s in signature.outputs if s.name not in outputs]
        if missing:
            raise RuntimeLoadError(f"model has no output {missing[0]!r} named in the manifest")
        self._inputs = inputs
        self._outputs = [outputs[spec.name] for spec in signature.outputs]
        self._boundary = boundary or {}
        self._signature = signature
        self._lock = threading.Lock()

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def _fit_shapes(self, row: dict[str, np.ndarray]) -> None:
        """Resize inputs whose feed shape differs from the interpreter's (a .tflite
        exported at batch 1 running the signature's fixed batch of rows)."""
        resize = {
            name: list(np.shape(value))
            for name, value in row.items()
            if list(self._inputs[name]["shape"]) != list(np.shape(value))
        }
        if not resize:
            return
        for name, shape in resize.items():
            self._interpreter.resize_tensor_input(self._inputs[name]["index"], shape)
        self._interpreter.allocate_tensors()
        self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        self._outputs = [outputs[d["name"]] for d in self._outputs]

    def _run_row(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._fit_shapes(row)
        for name, value in row.items():
            detail = self._inputs[name]
            if name in self._boundary:
                value = self._boundary[name].quantize(value)
            self._interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        self._interpreter.invoke()
        result: dict[str, np.ndarray] = {}
        for detail in self._outputs:
            value = np.array(self._interpreter.get_tensor(detail["index"]))
            if detail["name"] in self._boundary:
                value = self._boundary[detail["name"]].dequantize(value)
            result[detail["name"]] = value
        return result

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._signature.batch is not None:
            with self._lock:
                return run_in_batches(self._run_row, feeds, self._signature)
        batched = [v for v in feeds.values() if v.ndim]
        if not batched:
            with self._lock:
                return self._run_row(feeds)
        n = len(batched[0])
        with self._lock:
            rows = [
                self._run_row({k: v[i : i + 1] if v.ndim else v for k, v in feeds.items()})
                for i in range(n)
            ]
        return {d["name"]: np.concatenate([r[d["name"]] for r in rows]) for d in self._outputs}


def load_runtime(manifest: Manifest, slot_dir: Path) -> ModelRuntime:
    """Load the model of the bundle unpacked in ``slot_dir`` with the runtime it names.

    Every load happens beside the serving model, never on a request's path; its time
    is logged because a hot swap's worst request is bounded by one model call plus it.
    """
    name = manifest.runtime.name
    model_path = Path(slot_dir) / manifest.artifact
    started = time.perf_counter()
    runtime: ModelRuntime
    if name == "onnxruntime":
        runtime = OnnxRuntime(model_path, manifest.signature)
    elif name in ("ai-edge-litert", "tflite-runtime"):
        runtime = TfliteRuntime(
            model_path,
            manifest.signature,
            runtime_name=name,
            boundary=_boundary_from_manifest(manifest),
        )
    else:
        raise RuntimeLoadError(f"runtime {name!r} is not supported by this agent")
    logger.info(
        "model loaded bundle_id=%s load_ms=%.1f",
        manifest.bundle_id,
        (time.perf_counter() - started) * 1000,
    )
    return runtime


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


DRAIN_TIMEOUT_S = 30.0
"""Longest a replaced model is waited for; a request longer than that is a stuck one."""


class ModelHolder:
    """The one place one model name's current version lives: an RCU-like reference swap.

    A request takes the current model with ``serve()`` (a context manager that counts it
    in flight) and keeps using it, so a request in flight finishes on the old model
    while new ones get the new model the instant it is swapped in. Swapping is one
    assignment under a lock and never waits for a model call; ``drain`` then waits
    (bounded) until the replaced model's last request is answered, so the caller can let
    it go knowing nothing still runs on it. The new model is loaded *before* the swap,
    so no request ever waits for a load.
    """

    def __init__(self, model: ActiveModel | None = None) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._model = model
        self._inflight: dict[int, int] = {}

    def current(self) -> ActiveModel | None:
        with self._lock:
            return self._model

    @contextmanager
    def serve(self) -> Iterator[ActiveModel | None]:
        """The current model, counted in flight until the block ends."""
        with self._lock:
            model = self._model
            if model is not None:
                self._inflight[id(model)] = self._inflight.get(id(model), 0) + 1
        try:
            yield model
        finally:
            if model is not None:
                with self._lock:
                    left = self._inflight[id(model)] - 1
                    if left:
                        self._inflight[id(model)] = left
                    else:
                        del self._inflight[id(model)]
                        self._lock.notify_all()

    def inflight(self, model: ActiveModel) -> int:
        """Requests running on ``model`` right now."""
        with self._lock:
            return self._inflight.get(id(model), 0)

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        """Serve ``model`` from now on; returns the one it replaced (still draining)."""
        with self._lock:
            previous, self._model = self._model, model
        return previous

    def drain(self, model: ActiveModel | None, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until no request runs on ``model`` (one replaced by ``swap``).

        Returns:
            True once drained (at once for None), False when ``timeout`` passed first.
        """
        if model is None:
            return True
        with self._lock:
            return self._lock.wait_for(lambda: id(model) not in self._inflight, timeout)


class ModelTable:
    """Every model an agent serves, one ``ModelHolder`` per model name.

    The endpoint looks a request's model up by name here; the installer swaps one
    name's holder and never touches another's. A table built around a single holder
    (``ModelTable.single``) serves whatever that holder holds, under its own name:
    how a single-model server behaves.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[str, ModelHolder] = {}

    @classmethod
    def single(cls, holder: ModelHolder) -> ModelTable:
        table = cls()
        table._holders[""] = holder
        return table

    def holder(self, name: str) -> ModelHolder:
        """The holder of model ``name``, made empty on first use."""
        with self._lock:
            holder = self._holders.get(name)
            if holder is None:
                holder = self._holders[name] = ModelHolder()
            return holder

    def holders(self) -> list[ModelHolder]:
        with self._lock:
            return [self._holders[name] for name in sorted(self._holders)]

    def find(self, name: str) -> ModelHolder | None:
        """The holder now serving a model called ``name``, if any."""
        for holder in self.holders():
            model = holder.current()
            if model is not None and model.name == name:
                return holder
        return None

    def models(self) -> list[ActiveModel]:
        """The models served now, by name."""
        served = [m for h in self.holders() if (m := h.current()) is not None]
        return sorted(served, key=lambda m: m.name)
