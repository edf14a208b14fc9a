"""Runs a candidate in a runtime the way the device will: one row at a time, or in
batches of the model's fixed batch size.

The gate must see what the device sees, so candidates run at the device's batch in
the runtime the profile names, with every input of the signature and the same boundary
(de)quantization the agent does for integer-only models. The outputs of every row come
back, so the gate judges each output by what it means (``edgefleet.converters.gate``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.converters.candidate import Candidate, IoQuantization
from edgefleet.converters.errors import ConversionError
from edgefleet.converters.samples import FeedResult, Samples, feed_size, join_outputs


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def quantize_input(x: np.ndarray, q: IoQuantization) -> np.ndarray:
    """Float -> integer with the boundary's scale and zero-point, saturating."""
    info = np.iinfo(np.dtype(q.dtype))
    values = np.round(x / q.scale) + q.zero_point
    return np.clip(values, info.min, info.max).astype(q.dtype)


def dequantize_output(y: np.ndarray, q: IoQuantization) -> np.ndarray:
    """Integer -> float32 with the boundary's scale and zero-point."""
    return ((y.astype(np.float32) - q.zero_point) * q.scale).astype(np.float32)


class OnnxRunner:
    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        try:
            self._session: Any = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ConversionError(f"onnxruntime cannot load the candidate: {e}") from e
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._session.run(self.output_names, feed)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ConversionError(f"onnxruntime: {e}") from e
        return {n: np.asarray(v) for n, v in zip(self.output_names, results, strict=True)}


class TfliteRunner:
    """ai-edge-litert's interpreter; integer boundaries (de)quantized like the agent does."""

    def __init__(self, data: bytes, io_quantization: Mapping[str, IoQuantization]) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter: Any = Interpreter(model_content=data, num_threads=1)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ConversionError(f"ai-edge-litert cannot load the candidate: {e}") from e
        self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        self._outputs = self._interpreter.get_output_details()
        self._io = dict(io_quantization)
        self.input_names = list(self._inputs)
        self.output_names = [o["name"] for o in self._outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        resized = False
        for name, x in feed.items():
            detail = self._inputs[name]
            if list(detail["shape"]) != list(x.shape):
                self._interpreter.resize_tensor_input(detail["index"], list(x.shape))
                resized = True
        if resized:
            self._interpreter.allocate_tensors()
            self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        for name, x in feed.items():
            detail = self._inputs[name]
            if name in self._io:
                x = quantize_input(x, self._io[name])
            elif x.dtype != detail["dtype"] and x.dtype.kind != "f":
                raise ConversionError(f"input {name!r}: {x.dtype} is not {detail['dtype']}")
            self._interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
        self._interpreter.invoke()
        out: dict[str, np.ndarray] = {}
        for o in self._outputs:
            value = np.array(self._interpreter.get_tensor(o["index"]))
            if o["name"] in self._io:
                value = dequantize_output(value, self._io[o["name"]])
            out[o["name"]] = value
        return out


def runner_for(candidate: Candidate) -> Runner:
    if candidate.format == "onnx":
        return OnnxRunner(candidate.data)
    return TfliteRunner(candidate.data, candidate.io_quantization)


@dataclass(frozen=True)
class Measurement:
    """Every holdout row's outputs and the median latency per feed."""

    outputs: dict[str, np.ndarray]  # output name -> one leading entry per row
    latency_ms: float
    latency_p95_ms: float


def measure(runner: Runner, samples: Samples, *, warmup: int = 5) -> Measurement:
    """Run every row of ``samples`` at the device's batch; latency excludes warm-up runs."""
    feeds = list(samples.feeds())
    for feed, _real in feeds[:warmup]:
        runner.run(feed)
    pieces: list[FeedResult] = []
    times = np.empty(len(feeds), dtype=np.float64)
    for i, (feed, real) in enumerate(feeds):
        start = time.perf_counter()
        outputs = runner.run(feed)
        times[i] = time.perf_counter() - start
        pieces.append(FeedResult(outputs=outputs, size=feed_size(feed, samples), real=real))
    return Measurement(
        outputs=join_outputs(pieces),
        latency_ms=float(np.median(times) * 1000),
        latency_p95_ms=float(np.percentile(times, 95) * 1000),
    )


WORKER_SCRIPT = Path(__file__).with_name("tflite_worker.py")
WORKER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class WorkerResult:
    measurement: Measurement
    runtime: dict[str, str]  # name, version and numpy version the worker ran


def measure_in_worker(
    python: Path, candidate: Candidate, x: np.ndarray, *, warmup: int = 5
) -> WorkerResult:
    """``measure`` for a TFLite candidate, run by another environment's interpreter.

    The worker (``converters/tflite_worker.py``) runs one float input row by row and
    returns every row's outputs and latency; the gate judges them like ``measure``'s.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edgefleet-worker-") as name:
        work = Path(name)
        (work / "model.tflite").write_bytes(candidate.data)
        np.save(work / "x.npy", x, allow_pickle=False)
        request = {
            "io_quantization": {k: q.as_dict() for k, q in candidate.io_quantization.items()},
            "warmup": warmup,
        }
        (work / "request.json").write_text(json.dumps(request))
        # -I: the worker sees only its own environment, never this process's packages.
        done = subprocess.run(
            [str(python), "-I", str(WORKER_SCRIPT), str(work)],
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            raise ConversionError(f"worker runtime {python} failed: {lines[-1]}")
        with np.load(work / "outputs.npz", allow_pickle=False) as npz:
            outputs = {k: npz[k] for k in npz.files}
        latency = np.load(work / "latency_s.npy", allow_pickle=False)
        runtime = json.loads((work / "runtime.json").read_text())
    return WorkerResult(
        measurement=Measurement(
            outputs=outputs,
            latency_ms=float(np.median(latency) * 1000),
            latency_p95_ms=float(np.percentile(latency, 95) * 1000),
        ),
        runtime={str(k): str(v) for k, v in runtime.items()},
    )
