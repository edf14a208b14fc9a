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
import onnx
from sqlalchemy import text
from sqlmodel import Session, col, func, select

from edgefleet import drift, schema
from edgefleet.bundle import FileRole, write_bundle
from edgefleet.control_plane.core.errors import BuildError, NotFoundError
from edgefleet.control_plane.core.settings import Settings, profile_source
from edgefleet.control_plane.core.tables import Bundle, ModelVersion
from edgefleet.control_plane.services.model_registry import read_samples
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.converters.errors import ConversionError, GateError
from edgefleet.converters.model_format import inspect_model
from edgefleet.converters.onnx_inspect import OnnxInspection
from edgefleet.converters.pipeline import (
    BuildOutcome,
    Holdout,
    Progress,
    build_for_profile,
    fit_samples,
)
from edgefleet.converters.runner import OnnxRunner, TfliteRunner, runner_for
from edgefleet.converters.samples import SampleError, Samples, run_rows
from edgefleet.errors import BundleError, ProfileError
from edgefleet.profile import FirmwareProfile, load_profiles
from edgefleet.tensors import ModelSignature, top1_classes

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


HOLDOUT_NAMES = ("holdout.npz", "holdout.npy")
MAX_STATS_FEATURES = 1024
"""Widest input (values per row) the drift reference statistics are kept for."""


def load_holdout(data: bytes, *, source: str, signature: ModelSignature | None = None) -> Holdout:
    """A holdout file: ``.npy`` (one input) or ``.npz`` keyed by input name with optional
    ``labels``; an older ``.npz`` with ``x`` and ``y`` reads too.

    Without a signature only the older ``x``/``y`` form is read.
    """
    if signature is None:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                x = np.asarray(npz["x"])
                y = np.asarray(npz["y"]) if "y" in npz.files else None
        except (ValueError, OSError, EOFError, KeyError, AttributeError) as e:
            raise BuildError(f"holdout: not an .npz with x (and y): {e}") from e
        return Holdout(x=x, y=y, source=source)
    try:
        holdout, labels = read_samples(data, signature, what="holdout")
    except SampleError as e:
        raise BuildError(str(e)) from e
    return Holdout(x=holdout, y=labels, source=source)


def smoke_feed(samples: Samples) -> dict[str, np.ndarray]:
    """What the device runs after install: the first ``SMOKE_SAMPLES`` rows, or the
    first feed when some inputs are whole feeds (a scalar, a state)."""
    if samples.whole:
        return next(samples.feeds())[0]
    return {name: array[:SMOKE_SAMPLES] for name, array in samples.arrays.items()}


def _run_smoke(outcome: BuildOutcome, samples: Samples) -> dict[str, np.ndarray]:
    """The chosen candidate's outputs on the smoke feed, in the runtime it was gated in,
    at the device's batch (row by row, or the model's fixed batch)."""
    try:
        runner = runner_for(outcome.chosen)
        if samples.whole:
            outputs = runner.run(smoke_feed(samples))
        else:
            outputs = run_rows(runner.run, samples.head(SMOKE_SAMPLES))
    except (ConversionError, RuntimeError, ValueError) as e:  # runtimes raise these
        raise BuildError(f"chosen model does not run on the samples: {e}") from e
    return {name: outputs[name] for name in outcome.output_names}


def _source_for(model: ModelVersion, profile: FirmwareProfile) -> Path:
    """The file a profile builds from: the version's export in the profile's own format
    when it carries one (ONNX for onnxruntime, .tflite for LiteRT), else the primary."""
    wanted = "onnx" if profile.is_onnx else "tflite"
    if wanted in (model.formats or []) and wanted != model.format:
        return Path(model.path).with_name(f"model.{wanted}")
    return Path(model.path)


def _stats_input(samples: Samples) -> str | None:
    """The input the drift reference statistics describe: the first float input given
    as rows with at most ``MAX_STATS_FEATURES`` values per row."""
    for name, array in samples.arrays.items():
        if name in samples.whole or array.dtype.kind != "f" or array.ndim < 2:
            continue
        if int(np.prod(array.shape[1:])) <= MAX_STATS_FEATURES:
            return name
    return None


CATEGORICAL_METADATA_KEY = "edgefleet.categorical"
"""ONNX metadata entry declaring categorical features: JSON ``{"<input>": [indices]}``."""


def declared_categorical(model_bytes: bytes, input_name: str) -> list[int] | None:
    """The features of ``input_name`` the model declares categorical, or None.

    The signature read from a model has no field for it, so the declaration travels in
    the model file itself, as ONNX metadata (``CATEGORICAL_METADATA_KEY``); features not
    declared are still detected by their values (``edgefleet.drift``). A declaration
    that does not parse is ignored with a warning: detection still runs.
    """
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception:  # a .tflite (or anything onnx cannot read) declares nothing
        return None
    for prop in model.metadata_props:
        if prop.key != CATEGORICAL_METADATA_KEY:
            continue
        try:
            declared = json.loads(prop.value)
            indices = declared.get(input_name) if isinstance(declared, dict) else None
            if indices is None:
                return None
            if not isinstance(indices, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices
            ):
                raise ValueError("indices must be a list of non-negative integers")
            return indices
        except ValueError as e:  # json.JSONDecodeError is one
            logger.warning("categorical declaration ignored input=%s reason=%s", input_name, e)
            return None
    return None


OUTPUT_KINDS = {"classification": "classes", "binary": "classes", "regression": "scores"}
"""Gate task -> what output drift counts; embeddings are left out, and generic tensors
unless the model has an integer (label) output."""


def float_output_reference(
    model_bytes: bytes, holdout: Holdout, signature: ModelSignature, tasks: dict[str, str]
) -> dict[str, Any]:
    """The float model's answers on the holdout, as ``reference_statistics`` takes them.

    They are counted the way the agent counts its own (``top1_classes`` for classes, the
    first float value for scores), so a device's window is compared like with like.
    Empty (output drift off) when no output is a class or a score, or the float model
    does not run here; the bundle still builds.
    """
    judged = {t.split(":", 1)[0] for t in tasks.values()}
    kinds = {OUTPUT_KINDS[t] for t in judged if t in OUTPUT_KINDS}
    if "generic" in judged and any(o.dtype.kind in "iu" for o in signature.outputs):
        kinds.add("classes")  # an undeclared task with a label output: its classes
    if not kinds:
        return {}
    kind = "classes" if "classes" in kinds else "scores"
    try:
        x = fit_samples(signature, holdout.x, what="holdout")
        runner: Any = (
            OnnxRunner(model_bytes)
            if isinstance(inspect_model(model_bytes), OnnxInspection)
            else TfliteRunner(model_bytes, {})
        )
        outputs = run_rows(runner.run, x)
    except (ConversionError, RuntimeError, ValueError) as e:
        logger.warning("output drift off: the float model did not run reason=%s", e)
        return {}
    if kind == "classes":
        try:
            values = top1_classes(outputs)
        except ValueError:
            return {}
        columns = [v.shape[1] for v in outputs.values() if v.ndim == 2 and v.dtype.kind == "f"]
        n_classes = max(columns[0] if columns else 0, 2, int(values.max(initial=0)) + 1)
        return {"outputs": values, "output_kind": "classes", "n_classes": n_classes}
    scored = scored_output_values(outputs)
    return {} if scored is None else {"outputs": scored, "output_kind": "scores"}


def scored_output_values(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The first value of the first float output, per row (the agent's ``scores`` rule)."""
    for value in outputs.values():
        if value.dtype.kind == "f" and value.ndim >= 1 and len(value):
            return value.reshape(len(value), -1)[:, 0].astype(np.float64)
    return None


def _gate_holdout(
    model: ModelVersion, signature: ModelSignature, samples: Samples, given: Holdout | None
) -> Holdout:
    if given is not None:
        return given
    for name in HOLDOUT_NAMES:
        registered = Path(model.path).parent / name
        if registered.is_file():
            return load_holdout(
                registered.read_bytes(), source="registered holdout", signature=signature
            )
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
    try:
        signature = inspect_model(model_bytes).signature  # .onnx or .tflite, by content
        samples, _labels = read_samples(
            Path(model.samples_path).read_bytes(), signature, what="samples"
        )
    except ConversionError as e:  # SampleError too: the stored files no longer fit
        raise BuildError(str(e)) from e

    gate_holdout = _gate_holdout(model, signature, samples, holdout)
    try:
        outcome = measure(
            model_bytes,
            profile,
            calibration=samples,
            holdout=gate_holdout,
            task=model.task,
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

    outputs = _run_smoke(outcome, samples)
    exact = artifact.precision == "fp32"
    files: dict[str, tuple[bytes, FileRole]] = {artifact.filename: (artifact.data, "model")}
    smoke_inputs: dict[str, str] = {}
    for name, value in smoke_feed(samples).items():
        member = _member_name("smoke_input", name)
        files[member] = (_npy(value), "smoke_input")
        smoke_inputs[name] = member
    expected: dict[str, str] = {}
    for name, value in outputs.items():
        member = _member_name("smoke_expected", name)
        files[member] = (_npy(value), "smoke_output")
        expected[name] = member
    stats_input = _stats_input(samples)
    if stats_input is not None:
        rows = samples.arrays[stats_input]
        output_reference = float_output_reference(
            model_bytes, gate_holdout, signature, outcome.tasks
        )
        stats = reference_statistics(
            rows.reshape(len(rows), -1),
            input_name=stats_input,
            categorical=declared_categorical(model_bytes, stats_input),
            **output_reference,
        )
        files[REFERENCE_STATS_NAME] = (
            json.dumps(stats, sort_keys=True).encode(),
            "reference_stats",
        )

    with _build_lock:
        release = next_release(session)
        bundle_id = f"{model_name}-{model_version}-{profile.name}-r{release}"
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
                "inputs": smoke_inputs,
                "expected": expected,
                # A quantized model on another CPU may round differently at the edges.
                "atol": 1e-4 if exact else 2e-2,
                "rtol": 1e-3 if exact else 2e-2,
                "min_agreement": 1.0 if exact else 0.9,
            },
            "reference_stats": REFERENCE_STATS_NAME if stats_input is not None else None,
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
                "relative_error": chosen.relative_error,
                "outputs": chosen.outputs,
                "not_judged": chosen.not_judged,
                **outcome.reference,
            },
            "candidates": [{k: v for k, v in row.as_row().items()} for row in outcome.table],
            "objective": profile.objective,
        }
        bundle, size = store_signed_bundle(
            session=session,
            repository=repository,
            settings=settings,
            fields=fields,
            files=files,
            custom={
                "model": model_name,
                "model_version": model_version,
                "profiles": [profile.name],
                "hardware": [profile.arch],
            },
        )
        session.commit()
        session.refresh(bundle)
    logger.info("bundle built bundle_id=%s release=%d bytes=%d", bundle_id, release, size)
    return bundle


def store_signed_bundle(
    *,
    session: Session,
    repository: SignedRepository,
    settings: Settings,
    fields: dict[str, Any],
    files: dict[str, tuple[bytes, FileRole]],
    custom: dict[str, Any],
    what: str = "bundle",
) -> tuple[Bundle, int]:
    """Write the bundle ``fields`` and ``files`` describe, sign it as a TUF target
    (``custom`` beside its id and release) and add its row to ``session`` uncommitted.

    One path for model bundles and agent releases, under ``build_lock``: the release
    counter, the signed target and the row must agree.

    Returns:
        The row, and the bundle's size in bytes.
    """
    bundle_id, release = fields["bundle_id"], fields["release"]
    target = f"{bundle_id}.tar"
    settings.bundles_dir.mkdir(parents=True, exist_ok=True)
    path = settings.bundles_dir / target
    try:
        manifest = write_bundle(path, fields, files)
    except BundleError as e:
        raise BuildError(f"{what} could not be written: {e}") from e
    data = path.read_bytes()
    target_file = repository.add_target(
        target, data, {"bundle_id": bundle_id, "release": release, **custom}
    )
    bundle = Bundle(
        id=bundle_id,
        model=fields["model"]["name"],
        model_version=fields["model"]["version"],
        profile=fields["profiles"][0],
        release=release,
        target=target,
        sha256=target_file.hashes["sha256"],
        length=target_file.length,
        path=str(path),
        manifest=schema.to_builtins(manifest, omit_none=True),
    )
    session.add(bundle)
    return bundle, len(data)
