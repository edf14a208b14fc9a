"""How light the device agent is: import time and resident memory, against baselines.

Each case runs in a fresh interpreter (so imports are cold in the module cache,
warm in the OS page cache) several times; the median is reported, with ratios to a
bare ``python -c pass`` measured in the same run. The verify worker is the child
process that exists only while an offer is verified (python-tuf lives there, not
in the agent). The control plane's import is shown for scale: it is what the agent
must never pull in.

Then the issue's memory target, in one run: a real ``edgefleet-agent`` process,
connected to a private Mosquitto, with the digits bundle installed through the
control plane and serving, left idle for a few seconds; its resident set against a
bare interpreter holding only onnxruntime with the same model loaded (target:
within 20 MiB).

    .venv/bin/python bench/agent_footprint.py
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

RUNS = 7

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
{body}
elapsed = time.perf_counter() - t0
# VmHWM is this address space's peak RSS; ru_maxrss would carry the parent's over execve.
with open("/proc/self/status") as status:
    rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": elapsed, "rss_mib": rss_kib / 1024,
                   "modules": len(sys.modules),
                   "heavy": sorted(m for m in ("fastapi", "sqlmodel", "apscheduler", "uvicorn",
                                               "sklearn", "edgefleet.control_plane",
                                               "edgefleet.converters")
                                   if m in sys.modules)}}))
"""

CASES = {
    "baseline: bare interpreter": "pass",
    "agent daemon imported": "import edgefleet.agent.daemon",
    "agent + digits model loaded in onnxruntime": (
        "import edgefleet.agent.daemon, edgefleet.agent.inference.runtime\n"
        "import onnxruntime as ort\n"
        "session = ort.InferenceSession({model!r})\n"
    ),
    "verify worker (child, only during an install)": (
        "import edgefleet.agent.verification.verify_worker, edgefleet.agent.verification.tuf_client"
    ),
    "control plane app (for scale)": "import edgefleet.control_plane.app",
}


def run_case(body: str) -> dict[str, object]:
    samples = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(body=body)],
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(json.loads(out.stdout))
    return {
        "seconds": statistics.median(s["seconds"] for s in samples),
        "rss_mib": statistics.median(s["rss_mib"] for s in samples),
        "modules": samples[0]["modules"],
        "heavy": samples[0]["heavy"],
    }


IDLE_S = 5.0
BARE_RUNTIME_IDLE = r"""
import time, onnxruntime as ort
session = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])
session.run(None, {{session.get_inputs()[0].name: __import__("numpy").zeros((1, 64), "float32")}})
time.sleep({idle})
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024)
"""


def vm_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def idle_agent_rss(tmp: Path, onnx_bytes: bytes, samples: np.ndarray) -> float:
    """VmRSS of a live agent serving the installed digits bundle, after IDLE_S idle."""
    from fastapi.testclient import TestClient

    from edgefleet.control_plane.app import create_app
    from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.messages import BundleOffer
    from edgefleet_demo.spine import write_agent_config

    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    agent = None
    try:
        app = create_app(Settings(data_dir=tmp / "cp", broker_url=broker.url, api_auth=False))
        with TestClient(app) as api:
            npy = io.BytesIO()
            np.save(npy, samples, allow_pickle=False)
            api.post(
                "/api/v1/models",
                data={"name": "digits", "version": "1"},
                files={"model": ("m.onnx", onnx_bytes), "samples": ("s.npy", npy.getvalue())},
            ).raise_for_status()
            bundle = api.post(
                "/api/v1/bundles",
                json={"model": "digits", "version": "1", "profile": "x86-64-gateway-onnx"},
            ).json()
            root = tmp / "root.json"
            root.write_bytes(api.get("/api/v1/trust/root").content)
            config = tmp / "agent.toml"
            port = write_agent_config(
                config,
                device_id="dev-footprint01",
                profile="x86-64-gateway-onnx",
                broker=broker.url,
                data_dir=tmp / "agent",
                trust_root=root,
            )
            agent = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(
                lambda: api.get("/api/v1/devices/dev-footprint01").status_code == 200,
                "the agent to come online",
            )
            offer = BundleOffer(
                bundle_id=bundle["id"], target=bundle["target"], release=bundle["release"]
            )
            app.state.link.publish_offer("dev-footprint01", offer)
            url = f"http://127.0.0.1:{port}/v2/health/ready"

            def ready() -> bool:
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, "the agent to serve the bundle")
            time.sleep(IDLE_S)
            return vm_rss_mib(agent.pid)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        broker.stop()


def main() -> None:
    from edgefleet_demo.digits import train_digits_model

    digits = train_digits_model()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "digits.onnx"
        model_path.write_bytes(digits.onnx_bytes)
        results = {
            name: run_case(body.format(model=str(model_path))) for name, body in CASES.items()
        }
        bare_runtime = statistics.median(
            float(
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        BARE_RUNTIME_IDLE.format(model=str(model_path), idle=IDLE_S),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for _ in range(3)
        )
        agent_idle = idle_agent_rss(Path(tmp), digits.onnx_bytes, digits.samples)
    base = results["baseline: bare interpreter"]
    print(f"agent footprint (median of {RUNS} fresh interpreters, Python {sys.version.split()[0]})")
    print(f"{'case':46} {'import s':>9} {'RSS MiB':>8} {'RSS x base':>10} {'modules':>8}  heavy")
    for name, r in results.items():
        heavy = ",".join(r["heavy"]) or "-"
        ratio = r["rss_mib"] / base["rss_mib"]
        print(
            f"{name:46} {r['seconds']:9.3f} {r['rss_mib']:8.1f} "
            f"{ratio:10.2f} {r['modules']:8d}  {heavy}"
        )
    agent = results["agent daemon imported"]
    control_plane = results["control plane app (for scale)"]
    print(
        f"agent import is {control_plane['seconds'] / agent['seconds']:.1f}x faster and uses "
        f"{control_plane['rss_mib'] / agent['rss_mib']:.1f}x less memory than the control plane's"
    )
    extra = agent_idle - bare_runtime
    print(
        f"idle RSS after {IDLE_S:.0f} s: live agent serving digits {agent_idle:.1f} MiB, "
        f"bare onnxruntime with the same model {bare_runtime:.1f} MiB: "
        f"+{extra:.1f} MiB (target <= 20: {'met' if extra <= 20 else 'NOT met'})"
    )
    if agent["heavy"]:
        raise SystemExit(f"agent pulled in control-plane dependencies: {agent['heavy']}")


if __name__ == "__main__":
    main()
