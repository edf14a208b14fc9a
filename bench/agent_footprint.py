"""How light the device agent is: import time and resident memory, against baselines.

Each case runs in a fresh interpreter (so imports are cold in the module cache,
warm in the OS page cache) several times; the median is reported, with ratios to a
bare ``python -c pass`` measured in the same run. The control plane's import is
shown for scale: it is what the agent must never pull in.

    .venv/bin/python bench/agent_footprint.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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
                                               "sklearn", "control_plane", "converters")
                                   if m in sys.modules)}}))
"""

CASES = {
    "baseline: bare interpreter": "pass",
    "agent daemon imported": "import agent.daemon",
    "agent + digits model loaded in onnxruntime": (
        "import agent.daemon, agent.runtime\n"
        "import onnxruntime as ort\n"
        "session = ort.InferenceSession({model!r})\n"
    ),
    "control plane app (for scale)": "import control_plane.app",
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


def main() -> None:
    from control_plane.digits import train_digits_model

    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "digits.onnx"
        model_path.write_bytes(train_digits_model().onnx_bytes)
        results = {
            name: run_case(body.format(model=str(model_path))) for name, body in CASES.items()
        }
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
    if agent["heavy"]:
        raise SystemExit(f"agent pulled in control-plane dependencies: {agent['heavy']}")


if __name__ == "__main__":
    main()
