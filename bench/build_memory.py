"""What a bundle build costs the control plane: build time and its resident memory.

A real control plane (``python -m edgefleet.control_plane serve``, temp data dir, a
private Mosquitto) gets two models registered: a ~3 MB conv net built here with
``onnx.helper`` (five Conv+Relu layers, global average pooling, Gemm; ~750 k float
weights) and the demo's digits model. Each is built for the x86-64 ONNX profile and
the LiteRT int8 profile through the build-job API, while a thread samples the
control plane's ``VmRSS``; its ``VmHWM`` (the kernel's peak) is read at the end.
The builds run in a child process (``build_worker``), whose own peak comes back on
the job.

The baseline is the same build run in-process, as the control plane did before:
a fresh interpreter that imports the control-plane app, registers the model and
calls ``build_bundle`` with ``build_for_profile`` in its own process; its peak RSS
(``VmHWM``) is what the control plane would have grown to.

Registration takes 2-D inputs today, so the conv net reads a flat ``[N, 12288]``
input and reshapes it to ``[N, 3, 64, 64]`` first (``--input-4d`` registers a
``[N, 3, 64, 64]`` input instead, for a registry that accepts it).

    .venv/bin/python bench/build_memory.py [--samples 256] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker  # noqa: E402
from edgefleet.control_plane.client import ApiClient  # noqa: E402
from edgefleet.control_plane.core.netutil import free_port  # noqa: E402

PROFILES = ["x86-64-gateway-onnx", "x86-64-ipc-litert-int8"]
CHANNELS = [3, 32, 64, 128, 256, 128]  # conv widths: 3x3 kernels, ~750 k weights
STRIDES = [2, 2, 2, 1, 1]
SIDE = 64
CLASSES = 10


def conv_model(*, input_4d: bool, seed: int = 0) -> bytes:
    """A small image classifier: (Reshape) -> 5 x (Conv 3x3 + Relu) -> GAP -> Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    flat = CHANNELS[0] * SIDE * SIDE
    if input_4d:
        graph_input = helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, ["N", CHANNELS[0], SIDE, SIDE]
        )
        current = "input"
    else:
        graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", flat])
        inits.append(numpy_helper.from_array(np.array([-1, CHANNELS[0], SIDE, SIDE]), "shape"))
        nodes.append(helper.make_node("Reshape", ["input", "shape"], ["image"]))
        current = "image"
    for i, (cin, cout) in enumerate(itertools.pairwise(CHANNELS)):
        # He initialisation with batch norm folded in: activations keep their scale.
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, cout).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"w{i}", f"b{i}"],
                [f"conv{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[STRIDES[i]] * 2,
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        current = f"relu{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    w = rng.normal(0, np.sqrt(1.0 / CHANNELS[-1]), (CLASSES, CHANNELS[-1])).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "fc_w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b"),
    ]
    nodes.append(helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["scores"], transB=1))
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(nodes, "bench_conv", [graph_input], [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def conv_samples(n: int, *, input_4d: bool, seed: int = 1) -> np.ndarray:
    """Smooth random images (low-frequency noise), so the classes are not a coin toss."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (n, CHANNELS[0], 8, 8)).astype(np.float32)
    images = coarse.repeat(SIDE // 8, axis=2).repeat(SIDE // 8, axis=3)
    images += rng.normal(0, 0.1, images.shape).astype(np.float32)
    return images if input_4d else images.reshape(n, -1)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))
            except (OSError, StopIteration):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(kib_or_bytes: float, *, from_bytes: bool = False) -> str:
    return f"{kib_or_bytes / (1024 * 1024 if from_bytes else 1024):.0f} MiB"


def run_served(models: dict[str, tuple[bytes, np.ndarray]], work: Path) -> list[dict[str, Any]]:
    broker = MosquittoBroker(work / "broker")
    broker.start()
    port = free_port()
    log = (work / "serve.log").open("wb")
    command = [sys.executable, "-m", "edgefleet.control_plane", "serve", "--port", str(port)]
    command += ["--data-dir", str(work / "cp"), "--broker", broker.url, "--log-level", "warning"]
    env = {**os.environ, "EDGEFLEET_API_AUTH": "false", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit((work / "serve.log").read_text())
            try:
                if httpx.get(f"{url}/api/v1/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("control plane did not start")
            time.sleep(0.2)
        idle_kib = _status_kib(process.pid, "VmRSS")
        print(f"control plane pid {process.pid} idle RSS {mib(idle_kib)}")
        with ApiClient(url) as client:
            for name, (model, samples) in models.items():
                client.register_model(name=name, version="1", model=model, samples=samples)
                for profile in PROFILES:
                    with RssSampler(process.pid) as sampler:
                        started = time.monotonic()
                        job = client.wait_build(
                            client.start_build(model=name, version="1", profile=profile)["id"]
                        )
                        seconds = time.monotonic() - started
                    results.append(
                        {
                            "model": name,
                            "profile": profile,
                            "state": job["state"],
                            "chosen": _chosen(client, job),
                            "seconds": round(seconds, 1),
                            "cp_rss_peak_sampled_kib": sampler.peak_kib,
                            "cp_rss_hwm_kib": _status_kib(process.pid, "VmHWM"),
                            "worker_peak_bytes": job.get("worker_max_rss_bytes"),
                            "error": (job.get("error") or "")[:300] or None,
                        }
                    )
                    print(json.dumps(results[-1]))
    finally:
        process.terminate()
        process.wait()
        broker.stop()
    return results


def _chosen(client: ApiClient, job: dict[str, Any]) -> str | None:
    if job["state"] != "succeeded":
        return None
    bundle = client.get_bundle(job["bundle_id"])
    return str(bundle["manifest"]["lineage"]["candidate"])


BASELINE = r"""
import io, json, sys, time
import numpy as np
import edgefleet.control_plane.app  # the control plane's modules, as a served one has them
from pathlib import Path
from sqlmodel import Session
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.errors import BuildError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.services.bundle_builder import build_bundle
from edgefleet.control_plane.services.model_registry import register_model
from edgefleet.control_plane.trust.repository import SignedRepository

work, name, profile = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
settings = Settings(data_dir=work / "cp", broker_url="mqtt://127.0.0.1:1")
repository = SignedRepository(settings.repository_dir)
repository.init_or_load()
engine = make_engine(settings)
create_db_and_tables(engine)
with Session(engine) as session:
    register_model(session=session, settings=settings, name=name, version="1",
                   model_bytes=(work / "model.onnx").read_bytes(),
                   samples_bytes=(work / "samples.npy").read_bytes())
    started = time.monotonic()
    try:
        build_bundle(session=session, repository=repository, settings=settings,
                     model_name=name, model_version="1", profile_name=profile)
        state, error = "succeeded", None
    except BuildError as e:
        state, error = "failed", str(e)[:300]
    seconds = time.monotonic() - started
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
result = {"state": state, "seconds": round(seconds, 1), "rss_hwm_kib": hwm, "error": error}
print(json.dumps(result))
"""


def run_baseline(
    name: str, model: bytes, samples: np.ndarray, profile: str, work: Path
) -> dict[str, Any]:
    work.mkdir(parents=True)
    (work / "model.onnx").write_bytes(model)
    np.save(work / "samples.npy", samples)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", BASELINE, str(work), name, profile],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        return {"state": "crashed", "error": done.stderr[-500:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="conv net samples registered")
    parser.add_argument("--input-4d", action="store_true", help="register a [N, 3, 64, 64] input")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from edgefleet_demo.digits import train_digits_model

    conv = conv_model(input_4d=args.input_4d)
    digits = train_digits_model()
    models = {
        "conv": (conv, conv_samples(args.samples, input_4d=args.input_4d)),
        "digits": (digits.onnx_bytes, digits.samples),
    }
    print(
        f"conv model {len(conv) / 1e6:.2f} MB, {args.samples} samples; "
        f"digits {len(digits.onnx_bytes)} B"
    )
    with tempfile.TemporaryDirectory(prefix="edgefleet-build-bench-") as tmp:
        served = run_served(models, Path(tmp) / "served")
        baseline: dict[tuple[str, str], dict[str, Any]] = {}
        if not args.skip_baseline:
            for name, (model, samples) in models.items():
                for profile in PROFILES:
                    result = run_baseline(
                        name, model, samples, profile, Path(tmp) / f"base-{name}-{profile}"
                    )
                    baseline[(name, profile)] = result
                    print("baseline", name, profile, json.dumps(result))

    print()
    header = (
        f"{'model':<7} {'profile':<24} {'state':<9} {'chosen':<26} {'time':>7} "
        f"{'CP peak':>9} {'worker':>9} | {'in-proc':>7} {'peak':>9} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in served:
        base = baseline.get((row["model"], row["profile"]), {})
        cp_peak = row["cp_rss_hwm_kib"]
        base_peak = base.get("rss_hwm_kib")
        ratio = f"{base_peak / cp_peak:.1f}x" if base_peak else "-"
        worker = mib(row["worker_peak_bytes"], from_bytes=True) if row["worker_peak_bytes"] else "-"
        print(
            f"{row['model']:<7} {row['profile']:<24} {row['state']:<9} {row['chosen']!s:<26} "
            f"{row['seconds']:>6.1f}s {mib(cp_peak):>9} {worker:>9} | "
            f"{base.get('seconds', '-')!s:>6}s {mib(base_peak) if base_peak else '-':>9} {ratio:>6}"
        )
    for row in served:
        if row["error"]:
            print(f"\n{row['model']} {row['profile']}: {row['error']}")
    print(
        "\nCP peak: the served control plane's VmHWM after the build (its peak over its whole "
        "life so far); worker: the build child's peak; in-proc: the same build in one process."
    )


if __name__ == "__main__":
    main()
