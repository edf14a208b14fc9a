"""Builds a bundle for one registered model and one firmware profile.

The steps: build every candidate the profile allows from the float model, gate
them on the holdout in the profile's runtime and pick one (``edgefleet.converters.pipeline``),
run the chosen one on representative samples to make the smoke test the device
repeats after install, compute the reference statistics drift detection compares
against, write the bundle with its manifest (lineage, metrics, the candidates
table, boundary quantization), sign it into the TUF repository, and record it.

The gate's holdout is, in order: the one given with the build, the one registered
with the model (``holdout.npz`` beside it), else the registered samples, which are
also the calibration set, so the result is then marked unverified.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlmodel import Session, col, func, select

from edgefleet import drift, schema
from edgefleet.bundle import FileRole, write_bundle
from edgefleet.control_plane.core.errors import BuildError, NotFoundError
from edgefleet.control_plane.core.settings import Settings, profile_source
from edgefleet.control_plane.core.tables import Bundle, ModelVersion
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.converters.errors import ConversionError, GateError
from edgefleet.converters.pipeline import BuildOutcome, Holdout, Progress, build_for_profile
from edgefleet.converters.runner import runner_for
from edgefleet.errors import BundleError, ProfileError
from edgefleet.profile import FirmwareProfile, load_profiles

logger = logging.getLogger(__name__)

SMOKE_SAMPLES = 16
HISTOGRAM_BINS = 10
REFERENCE_STATS_NAME = "reference_stats.json"
_build_lock = threading.Lock()  # release numbers are handed out one build at a time
RELEASE_LOCK_KEY = 0x65646765_72656C  # PostgreSQL advisory lock: one release handed out at a time


def next_release(session: Session) -> int:
    """The next release counter, held for ``session``'s transaction.

    Within one process ``_build_lock`` serializes builds; across control-plane replicas
    on one PostgreSQL database a transaction-scoped advisory lock does, so two replicas
    building at the same moment never pick the same release (it is released when the
    build's transaction commits or rolls back). SQLite allows a single writer anyway.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RELEASE_LOCK_KEY})
    latest = session.exec(select(func.max(col(Bundle.release)))).one()
    return int(latest or 0) + 1


def get_profile(settings: Settings, profile_name: str) -> FirmwareProfile:
    """The named firmware profile; ``NotFoundError`` when there is none."""
    try:
        profiles = load_profiles(profile_source(settings))
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


def reference_statistics(samples: np.ndarray, *, input_name: str, **options: Any) -> dict[str, Any]:
    """The drift reference of ``samples``: ``edgefleet.drift.reference_statistics``."""
    return drift.reference_statistics(samples, input_name=input_name, **options)


HOLDOUT_NAME = "holdout.npz"


def load_holdout(data: bytes, *, source: str) -> Holdout:
    """An ``.npz`` with ``x`` (float32 [n, features]) and optionally ``y`` (int [n])."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            x = np.asarray(npz["x"], dtype=np.float32)
            y = np.asarray(npz["y"]).astype(np.int64) if "y" in npz.files else None
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise BuildError(f"holdout: not an .npz with x (and y): {e}") from e
    if x.ndim != 2 or x.shape[0] == 0 or (y is not None and y.shape != (x.shape[0],)):
        raise BuildError(f"holdout: x must be [n, features] and y [n], got {list(x.shape)}")
    return Holdout(x=x, y=y, source=source)


def _run_smoke(outcome: BuildOutcome, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The chosen candidate's outputs, row by row, in the runtime it was gated in."""
    try:
        runner = runner_for(outcome.chosen)
        rows = [runner.run(row[None, ...]) for row in inputs]
    except ConversionError as e:
        raise BuildError(f"chosen model does not run: {e}") from e
    return {name: np.concatenate([r[name] for r in rows]) for name in outcome.output_names}


def _source_for(model: ModelVersion, profile: FirmwareProfile) -> Path:
    """The file a profile builds from: the version's export in the profile's own format
    when it carries one (ONNX for onnxruntime, .tflite for LiteRT), else the primary."""
    wanted = "onnx" if profile.is_onnx else "tflite"
    if wanted in (model.formats or []) and wanted != model.format:
        return Path(model.path).with_name(f"model.{wanted}")
    return Path(model.path)


def _gate_holdout(model: ModelVersion, samples: np.ndarray, given: Holdout | None) -> Holdout:
    if given is not None:
        return given
    registered = Path(model.path).parent / HOLDOUT_NAME
    if registered.is_file():
        return load_holdout(registered.read_bytes(), source="registered holdout")
    return Holdout(x=samples, y=None, source="registered samples (no holdout; unverified)")


def build_bundle(
    *,
    session: Session,
    repository: SignedRepository,
    settings: Settings,
    model_name: str,
    model_version: str,
    profile_name: str,
    max_accuracy_drop: float | None = None,
    holdout: Holdout | None = None,
    progress: Progress | None = None,
    measure: Callable[..., BuildOutcome] = build_for_profile,
) -> Bundle:
    """Build, gate, sign and record a bundle of ``model_name`` ``model_version`` for a profile.

    ``BuildError`` when no candidate passes the gate; its message lists every candidate.
    ``measure`` builds and gates the candidates: ``build_for_profile`` in this process,
    or ``build_worker.BuildProcess.build`` in a child process (what the API uses).
    """
    profile = get_profile(settings, profile_name)
    model = session.exec(
        select(ModelVersion).where(
            ModelVersion.name == model_name, ModelVersion.version == model_version
        )
    ).first()
    if model is None:
        raise NotFoundError(f"model {model_name} version {model_version} not found")
    source = _source_for(model, profile)
    model_bytes = source.read_bytes()
    samples = np.load(model.samples_path, allow_pickle=False).astype(np.float32)

    try:
        outcome = measure(
            model_bytes,
            profile,
            calibration=samples,
            holdout=_gate_holdout(model, samples, holdout),
            max_accuracy_drop=max_accuracy_drop,
            cache_dir=settings.bundles_dir / "calibration-cache",
            progress=progress,
        )
    except GateError as e:
        logger.warning("gate refused every candidate model=%s profile=%s", model_name, profile.name)
        raise BuildError(str(e)) from e
    except ConversionError as e:
        raise BuildError(str(e)) from e
    artifact = outcome.chosen
    chosen = outcome.chosen_row
    signature = outcome.inspection.signature
    input_name = signature.inputs[0].name

    smoke_inputs = samples[:SMOKE_SAMPLES]
    outputs = _run_smoke(outcome, smoke_inputs)
    exact = artifact.precision == "fp32"
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
        release = next_release(session)
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
            "format": artifact.format,
            "signature": schema.to_builtins(signature),
            # Integer model boundaries: the agent quantizes inputs and dequantizes
            # outputs with these, so clients always send and receive float tensors.
            "quantization": {n: q.as_dict() for n, q in artifact.io_quantization.items()},
            # Scores output -> the class label of each column (an ONNX-ML ZipMap's labels).
            **({"labels": model.labels} if model.labels else {}),
            "smoke_test": {
                "inputs": {input_name: _member_name("smoke_input", input_name)},
                "expected": expected,
                # A quantized model on another CPU may round differently at the edges.
                "atol": 1e-4 if exact else 2e-2,
                "rtol": 1e-3 if exact else 2e-2,
                "min_agreement": 1.0 if exact else 0.9,
            },
            "reference_stats": REFERENCE_STATS_NAME,
            "lineage": {
                "source_sha256": outcome.inspection.sha256,
                "source_format": source.suffix.lstrip("."),
                **({"artifact_check": model.artifact_check} if model.artifact_check else {}),
                "model_sha256": model.sha256,
                "candidate": artifact.name,
                "recipe": artifact.recipe,
                "calibration_sha256": artifact.recipe.get("calibration_sha256"),
                "gate_runtime": outcome.gate_runtime,
                "opsets": outcome.inspection.opsets,
                "op_histogram": outcome.inspection.op_histogram,
                "built_at": datetime.now(UTC).isoformat(),
            },
            "metrics": {
                "size_bytes": len(artifact.data),
                "precision": artifact.precision,
                "accuracy": chosen.accuracy,
                "accuracy_drop": chosen.drop,
                "agreement": chosen.agreement,
                "worst_class_drop": chosen.worst_class_drop,
                "latency_ms": chosen.latency_ms,
                "verified": outcome.verified,
                **outcome.reference,
            },
            "candidates": [{k: v for k, v in row.as_row().items()} for row in outcome.table],
            "objective": profile.objective,
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
            manifest=schema.to_builtins(manifest, omit_none=True),
        )
        session.add(bundle)
        session.commit()
        session.refresh(bundle)
    logger.info("bundle built bundle_id=%s release=%d bytes=%d", bundle_id, release, len(data))
    return bundle
