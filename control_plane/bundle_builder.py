"""Builds a bundle for one registered model and one firmware profile.

The steps: convert the float model for the profile, run it on representative
samples to make the smoke test the device repeats after install, compute the
reference statistics drift detection compares against, write the bundle with its
manifest, sign it into the TUF repository, and record it.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sqlmodel import Session, col, func, select

from control_plane.errors import BuildError, NotFoundError
from control_plane.models import Bundle, ModelVersion
from control_plane.repository import SignedRepository
from control_plane.settings import Settings
from converters.errors import ConversionError
from converters.onnx_fp32 import build_fp32_onnx
from edgefleet.bundle import FileRole, write_bundle
from edgefleet.errors import BundleError, ProfileError
from edgefleet.profile import FirmwareProfile, load_profiles

logger = logging.getLogger(__name__)

SMOKE_SAMPLES = 16
HISTOGRAM_BINS = 10
REFERENCE_STATS_NAME = "reference_stats.json"
_build_lock = threading.Lock()  # release numbers are handed out one build at a time


def get_profile(settings: Settings, profile_name: str) -> FirmwareProfile:
    """The named firmware profile; ``NotFoundError`` when there is none."""
    try:
        profiles = load_profiles(settings.profiles_dir)
    except ProfileError as e:
        raise BuildError(f"firmware profiles are invalid: {e}") from e
    if profile_name not in profiles:
        raise NotFoundError(f"profile {profile_name!r} not found")
    return profiles[profile_name]


def _member_name(prefix: str, tensor: str) -> str:
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9._-]', '_', tensor)}.npy"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def reference_statistics(samples: np.ndarray, *, input_name: str) -> dict[str, Any]:
    """Per-feature histograms of ``samples`` with bin edges at sample quantiles.

    Constant features get a single bin around their value so that any later
    deviation lands outside it.
    """
    features = []
    for index in range(samples.shape[1]):
        column = samples[:, index].astype(np.float64)
        edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)))
        if edges.size < 2:
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        counts, _ = np.histogram(column, bins=edges)
        features.append(
            {
                "index": index,
                "edges": [float(e) for e in edges],
                "proportions": [float(c) / len(column) for c in counts],
            }
        )
    return {
        "schema_version": 1,
        "input": input_name,
        "n_samples": int(samples.shape[0]),
        "features": features,
    }


def _run_smoke(model_bytes: bytes, input_name: str, inputs: np.ndarray) -> dict[str, np.ndarray]:
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, {input_name: inputs})
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise BuildError(f"model does not run on onnxruntime: {e}") from e
    return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}


def build_bundle(
    *,
    session: Session,
    repository: SignedRepository,
    settings: Settings,
    model_name: str,
    model_version: str,
    profile_name: str,
) -> Bundle:
    """Build, sign and record a bundle of ``model_name`` ``model_version`` for a profile."""
    profile = get_profile(settings, profile_name)
    model = session.exec(
        select(ModelVersion).where(
            ModelVersion.name == model_name, ModelVersion.version == model_version
        )
    ).first()
    if model is None:
        raise NotFoundError(f"model {model_name} version {model_version} not found")
    model_bytes = Path(model.path).read_bytes()
    samples = np.load(model.samples_path, allow_pickle=False).astype(np.float32)

    try:
        artifact = build_fp32_onnx(model_bytes, profile)
    except ConversionError as e:
        raise BuildError(str(e)) from e
    if len(artifact.signature.inputs) != 1:
        raise BuildError("only models with exactly one input are supported")
    input_name = artifact.signature.inputs[0].name

    smoke_inputs = samples[:SMOKE_SAMPLES]
    outputs = _run_smoke(artifact.data, input_name, smoke_inputs)
    files: dict[str, tuple[bytes, FileRole]] = {
        artifact.filename: (artifact.data, "model"),
        _member_name("smoke_input", input_name): (_npy(smoke_inputs), "smoke_input"),
    }
    expected: dict[str, str] = {}
    for name, value in outputs.items():
        member = _member_name("smoke_expected", name)
        files[member] = (_npy(value), "smoke_output")
        expected[name] = member
    stats = reference_statistics(samples, input_name=input_name)
    files[REFERENCE_STATS_NAME] = (
        json.dumps(stats, sort_keys=True).encode(),
        "reference_stats",
    )

    with _build_lock:
        latest = session.exec(select(func.max(col(Bundle.release)))).one()
        release = int(latest or 0) + 1
        bundle_id = f"{model_name}-{model_version}-{profile.name}-r{release}"
        target = f"{bundle_id}.tar"
        fields: dict[str, Any] = {
            "bundle_id": bundle_id,
            "model": {"name": model_name, "version": model_version},
            "release": release,
            "profiles": [profile.name],
            "hardware": [profile.arch],
            "runtime": {"name": profile.runtime.name, "version": profile.runtime.version},
            "artifact": artifact.filename,
            "signature": artifact.signature.model_dump(mode="json"),
            "smoke_test": {
                "inputs": {input_name: _member_name("smoke_input", input_name)},
                "expected": expected,
                "atol": 1e-4,
                "rtol": 1e-3,
                "min_agreement": 1.0,
            },
            "reference_stats": REFERENCE_STATS_NAME,
            "lineage": {
                **artifact.lineage,
                "model_sha256": model.sha256,
                "built_at": datetime.now(UTC).isoformat(),
            },
            "metrics": {"size_bytes": len(artifact.data), "precision": artifact.precision},
        }
        settings.bundles_dir.mkdir(parents=True, exist_ok=True)
        path = settings.bundles_dir / target
        try:
            manifest = write_bundle(path, fields, files)
        except BundleError as e:
            raise BuildError(f"bundle could not be written: {e}") from e
        data = path.read_bytes()
        target_file = repository.add_target(
            target,
            data,
            {
                "bundle_id": bundle_id,
                "release": release,
                "model": model_name,
                "model_version": model_version,
                "profiles": [profile.name],
                "hardware": [profile.arch],
            },
        )
        bundle = Bundle(
            id=bundle_id,
            model=model_name,
            model_version=model_version,
            profile=profile.name,
            release=release,
            target=target,
            sha256=target_file.hashes["sha256"],
            length=target_file.length,
            path=str(path),
            manifest=manifest.model_dump(mode="json", exclude_none=True),
        )
        session.add(bundle)
        session.commit()
        session.refresh(bundle)
    logger.info("bundle built bundle_id=%s release=%d bytes=%d", bundle_id, release, len(data))
    return bundle
