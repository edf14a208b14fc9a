"""Separate Python environments for runtimes that cannot share the control plane's.

tflite-runtime 2.14, the last release legacy ARMv7 boards can install, needs
numpy < 2, while the control plane runs numpy 2. Gating such a profile's candidates
in ai-edge-litert would measure a different runtime from the one on the device, so
the gate runs them in a small virtualenv holding exactly that runtime and numpy
(``converters/tflite_worker.py``), and records which runtime judged the bundle.

The ONNX→TFLite converter (onnx2tf on TensorFlow, ``converters/onnx2tflite.py``) gets
an environment of its own for the same reason: TensorFlow pins numpy < 2 and its own
protobuf, and importing it into the control plane would cost ~600 MB of RSS per build.

The environments live under ``<sys.prefix>/worker-envs/`` (inside the control
plane's own virtualenv, so they come and go with it), or ``$EDGEFLEET_WORKER_ENVS``.
``make setup`` creates them: ``python -m edgefleet.converters.worker_envs install``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgefleet.profile import FirmwareProfile

logger = logging.getLogger(__name__)

ENV_VAR = "EDGEFLEET_WORKER_ENVS"
# 1: leave out the onnx2tf environment (2.4 GB); conv nets then cannot reach TFLite profiles.
SKIP_CONVERTER_VAR = "EDGEFLEET_SKIP_ONNX2TF"


@dataclass(frozen=True)
class WorkerEnvSpec:
    """One runtime at one version, and the exact packages its environment holds."""

    runtime: str
    version: str
    requirements: tuple[str, ...]
    # Installed after ``requirements`` with --no-deps: onnx2tf pins exact versions of
    # everything (full tensorflow, opencv, ...); its needed dependencies are listed above.
    no_deps: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.version}"


WORKER_ENVS: tuple[WorkerEnvSpec, ...] = (
    WorkerEnvSpec("tflite-runtime", "2.14.0", ("tflite-runtime==2.14.0", "numpy>=1.23,<2")),
)

# What onnx2tf 1.29.24 imports, at the versions it is tested with, but tensorflow-cpu
# instead of tensorflow and without opencv (used only for ImageDecoder) or onnxoptimizer.
ONNX2TF_ENV = WorkerEnvSpec(
    "onnx2tf",
    "1.29.24",
    (
        "tensorflow-cpu==2.19.0",
        "tf-keras==2.19.0",
        "onnx==1.19.1",
        "onnxruntime==1.23.0",
        "onnxsim==0.4.36",
        "onnx-graphsurgeon==0.5.8",
        "sng4onnx==1.0.5",
        "sne4onnx==1.0.15",
        "ai-edge-litert==2.1.0",
        "psutil==5.9.5",
        "h5py==3.11.0",
        "ml-dtypes==0.5.1",
        "numpy==1.26.4",
        "protobuf==4.25.5",
        "flatbuffers>=24.3.25",
        "requests>=2.31",
    ),
    no_deps=("onnx2tf==1.29.24",),
)


def worker_envs_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path(sys.prefix) / "worker-envs")


def worker_python(spec: WorkerEnvSpec) -> Path:
    return worker_envs_root() / spec.name / "bin" / "python"


def spec_for(profile: FirmwareProfile) -> WorkerEnvSpec | None:
    """The worker environment that runs ``profile``'s runtime, if one is defined."""
    for spec in WORKER_ENVS:
        if spec.runtime == profile.runtime.name and profile.runtime.admits(spec.version):
            return spec
    return None


def converter_python() -> Path | None:
    """The onnx2tf environment's interpreter when it has been installed."""
    python = worker_python(ONNX2TF_ENV)
    return python if python.exists() else None


def installed_python(profile: FirmwareProfile) -> Path | None:
    """The worker interpreter for ``profile`` when its environment has been installed."""
    spec = spec_for(profile)
    if spec is None:
        return None
    python = worker_python(spec)
    return python if python.exists() else None


def install(spec: WorkerEnvSpec, *, python: str = sys.executable) -> Path:
    """Create the environment (idempotent) and return its interpreter."""
    env_dir = worker_envs_root() / spec.name
    stamp = env_dir / ".edgefleet-requirements.json"
    wanted = json.dumps([*spec.requirements, *spec.no_deps])
    if stamp.exists() and stamp.read_text() == wanted and worker_python(spec).exists():
        return worker_python(spec)
    subprocess.run([python, "-m", "venv", "--clear", str(env_dir)], check=True)
    subprocess.run(
        [str(worker_python(spec)), "-m", "pip", "install", "-q", *spec.requirements], check=True
    )
    if spec.no_deps:
        subprocess.run(
            [str(worker_python(spec)), "-m", "pip", "install", "-q", "--no-deps", *spec.no_deps],
            check=True,
        )
    stamp.write_text(wanted)
    logger.info("worker environment installed name=%s dir=%s", spec.name, env_dir)
    return worker_python(spec)


def main() -> None:
    if sys.argv[1:] != ["install"]:
        raise SystemExit("usage: python -m edgefleet.converters.worker_envs install")
    skip_converter = os.environ.get(SKIP_CONVERTER_VAR) == "1"
    for spec in (*WORKER_ENVS, *(() if skip_converter else (ONNX2TF_ENV,))):
        print(f"worker environment {spec.name}: {install(spec)}")
    if skip_converter:
        print(f"worker environment {ONNX2TF_ENV.name}: skipped ({SKIP_CONVERTER_VAR}=1)")


if __name__ == "__main__":
    main()
