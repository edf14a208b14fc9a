"""Runs a TFLite candidate in a worker environment's own runtime (tflite-runtime 2.14).

Executed as a script by that environment's interpreter, which holds only numpy and
the runtime: so it imports nothing from edgefleet. ``edgefleet.converters.runner`` writes the
request into a directory and reads the answer back:

    request.json   {"io_quantization": {name: {"dtype", "scale", "zero_point"}}, "warmup": n}
    model.tflite   the candidate
    x.npy          float32 holdout rows, run one at a time (the device's batch size)
    -> outputs.npz one array per output, rows stacked; latency_s.npy; runtime.json

The (de)quantization at the boundary is the agent's (``agent/runtime.py``), repeated
here because this environment cannot import it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tflite_runtime import __version__ as runtime_version
from tflite_runtime.interpreter import Interpreter


def main(work: Path) -> None:
    request = json.loads((work / "request.json").read_text())
    io = request["io_quantization"]
    interpreter = Interpreter(model_path=str(work / "model.tflite"), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    x = np.load(work / "x.npy", allow_pickle=False)

    def run(row: np.ndarray) -> list[np.ndarray]:
        q = io.get(detail["name"])
        if q is not None:
            info = np.iinfo(np.dtype(q["dtype"]))
            row = np.clip(np.round(row / q["scale"]) + q["zero_point"], info.min, info.max)
        interpreter.set_tensor(detail["index"], row.astype(detail["dtype"]))
        interpreter.invoke()
        values = []
        for out in outputs:
            value = np.array(interpreter.get_tensor(out["index"]))
            q = io.get(out["name"])
            if q is not None:
                value = ((value.astype(np.float32) - q["zero_point"]) * q["scale"]).astype(
                    np.float32
                )
            values.append(value)
        return values

    for row in x[: request["warmup"]]:
        run(row[None, ...])
    results: list[list[np.ndarray]] = [[] for _ in outputs]
    latency = np.empty(len(x), dtype=np.float64)
    for i, row in enumerate(x):
        started = time.perf_counter()
        values = run(row[None, ...])
        latency[i] = time.perf_counter() - started
        for collected, value in zip(results, values, strict=True):
            collected.append(value)
    stacked = {out["name"]: np.concatenate(v) for out, v in zip(outputs, results, strict=True)}
    np.savez(work / "outputs.npz", **stacked)  # type: ignore[arg-type]  # numpy stubs: kwargs
    np.save(work / "latency_s.npy", latency)
    (work / "runtime.json").write_text(
        json.dumps({"name": "tflite-runtime", "version": runtime_version, "numpy": np.__version__})
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
