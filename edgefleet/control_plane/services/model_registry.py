"""Registering float models and their representative samples."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
from sqlmodel import Session, col, select

from edgefleet import schema
from edgefleet.control_plane.core.errors import ConflictError, InvalidRequestError
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import MODEL_NAME_PATTERN, ModelVersion
from edgefleet.converters.artifact_pair import compare_artifacts
from edgefleet.converters.errors import ConversionError
from edgefleet.converters.gate import resolve_tasks, signature_problems
from edgefleet.converters.model_format import ReadModel, read_model
from edgefleet.converters.samples import SampleError, Samples, check_labels, load_arrays
from edgefleet.fileio import atomic_write
from edgefleet.tensors import ModelSignature

logger = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


ZIP_MAGIC = b"PK\x03\x04"
"""How an ``.npz`` (a zip archive) starts; an ``.npy`` starts with ``\x93NUMPY``."""


def stored_name(stem: str, data: bytes) -> str:
    """``stem.npz`` or ``stem.npy`` by the upload's content."""
    return f"{stem}.npz" if data.startswith(ZIP_MAGIC) else f"{stem}.npy"


def read_samples(
    data: bytes, signature: ModelSignature, *, what: str
) -> tuple[Samples, np.ndarray | None]:
    """``.npy`` (one input) or ``.npz`` keyed by input name, fitted to ``signature``
    without casting; the labels when the file has them. ``SampleError`` names the input."""
    loaded = load_arrays(data, signature, what=what)
    samples = Samples.fit(signature, loaded.arrays, what=what)
    labels = None
    if loaded.labels is not None:
        labels = check_labels(loaded.labels, samples.n, what=what)
    return samples, labels


def register_model(
    *,
    session: Session,
    settings: Settings,
    name: str,
    version: str,
    model_bytes: bytes,
    samples_bytes: bytes,
    holdout_bytes: bytes | None = None,
    task: str | None = None,
    companion_bytes: bytes | None = None,
) -> ModelVersion:
    """Check and store a float model (.onnx or .tflite, told by content) with its samples;
    ``ConflictError`` if it exists.

    ``samples`` (and the optional holdout) are ``.npy`` for a one-input model or ``.npz``
    keyed by input name; each input's dtype and shape must fit the signature read from
    the model (``edgefleet.converters.samples``), nothing is cast. The holdout may carry
    labels (``labels``, or ``y`` as before) and is what the gate judges every bundle of
    this model on; it must not overlap the samples, which calibrate the quantizers.
    ``task`` says what the outputs mean (``edgefleet.converters.gate.parse_task``).

    The optional companion is the same model exported in the other format (an .onnx
    beside a .tflite): it must serve the same tensors and agree with the model on the
    samples; ONNX profiles then build from the ONNX file and TFLite profiles from the
    .tflite.
    """
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise InvalidRequestError(f"name must match {MODEL_NAME_PATTERN}")
    if not VERSION_RE.fullmatch(version):
        raise InvalidRequestError(f"version must match {VERSION_RE.pattern}")
    existing = session.exec(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    ).first()
    if existing is not None:
        raise ConflictError(f"model {name} version {version} already exists")
    try:
        read = read_model(model_bytes)  # .onnx or .tflite, by content; ZipMap removed
    except ConversionError as e:
        raise InvalidRequestError(f"model: {e}") from e
    model_bytes, inspection = read.data, read.inspection
    signature = inspection.signature
    try:
        samples, sample_labels = read_samples(samples_bytes, signature, what="samples")
        labels = None
        if holdout_bytes is not None:
            _holdout, labels = read_samples(holdout_bytes, signature, what="holdout")
    except SampleError as e:
        raise InvalidRequestError(str(e)) from e
    if sample_labels is not None:
        raise InvalidRequestError("samples: labels belong with the holdout, not the samples")
    outputs = [o.name for o in signature.outputs]
    try:
        tasks = resolve_tasks(task, outputs, labels=labels)
    except ValueError as e:
        raise InvalidRequestError(f"task: {e}") from e
    problems = signature_problems(tasks, signature.outputs)
    if problems:
        raise InvalidRequestError("task: " + "; ".join(problems))
    logger.debug("model inputs fitted name=%s rows=%d", name, samples.n)
    companion: ReadModel | None = None
    artifact_check = None
    if companion_bytes is not None:
        try:
            companion = read_model(companion_bytes)
            artifact_check = compare_artifacts(read, companion, samples)
        except ConversionError as e:
            raise InvalidRequestError(f"companion: {e}") from e

    directory = settings.models_dir / name / version
    model_path = directory / f"model.{read.format}"
    samples_path = directory / stored_name("samples", samples_bytes)
    atomic_write(model_path, model_bytes)
    atomic_write(samples_path, samples_bytes)
    if holdout_bytes is not None:
        atomic_write(directory / stored_name("holdout", holdout_bytes), holdout_bytes)
    if companion is not None:
        atomic_write(directory / f"model.{companion.format}", companion.data)
    model = ModelVersion(
        name=name,
        version=version,
        sha256=inspection.sha256,
        size_bytes=inspection.size_bytes,
        path=str(model_path),
        samples_path=str(samples_path),
        signature=schema.to_builtins(signature, omit_none=True),
        task=task or None,
        format=read.format,
        formats=[str(m.format) for m in (read, companion) if m is not None],
        artifact_check=artifact_check,
        labels=read.labels or (companion.labels if companion else None) or None,
    )
    session.add(model)
    session.commit()
    session.refresh(model)
    logger.info("model registered name=%s version=%s sha256=%s", name, version, model.sha256)
    return model


def list_models(*, session: Session) -> Sequence[ModelVersion]:
    return session.exec(
        select(ModelVersion).order_by(col(ModelVersion.name), col(ModelVersion.id))
    ).all()
