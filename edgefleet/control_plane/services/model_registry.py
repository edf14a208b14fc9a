"""Registering float models and their representative samples."""

from __future__ import annotations

import io
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
from edgefleet.converters.model_format import ReadModel, read_model
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def _load_samples(samples_bytes: bytes) -> np.ndarray:
    try:
        samples = np.load(io.BytesIO(samples_bytes), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InvalidRequestError(f"samples: not a readable .npy array: {e}") from e
    if not isinstance(samples, np.ndarray):
        raise InvalidRequestError("samples: expected a single .npy array")
    if samples.dtype != np.float32:
        raise InvalidRequestError(f"samples: dtype must be float32, got {samples.dtype}")
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise InvalidRequestError(
            f"samples: must be a non-empty 2-D array, got shape {list(samples.shape)}"
        )
    return samples


def _check_holdout(holdout_bytes: bytes, width: int) -> None:
    """The holdout must be an .npz with x [n, width] float and, if present, y [n] integers."""
    try:
        with np.load(io.BytesIO(holdout_bytes), allow_pickle=False) as npz:
            x = np.asarray(npz["x"])
            y = np.asarray(npz["y"]) if "y" in npz.files else None
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise InvalidRequestError(f"holdout: not an .npz with x (and y): {e}") from e
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != width:
        raise InvalidRequestError(f"holdout: x must be [n, {width}], got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidRequestError(f"holdout: x must be floating point, got {x.dtype}")
    if y is not None and (y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer)):
        raise InvalidRequestError("holdout: y must hold one integer label per row of x")


def register_model(
    *,
    session: Session,
    settings: Settings,
    name: str,
    version: str,
    model_bytes: bytes,
    samples_bytes: bytes,
    holdout_bytes: bytes | None = None,
    companion_bytes: bytes | None = None,
) -> ModelVersion:
    """Check and store a float ONNX model with its samples; ``ConflictError`` if it exists.

    The optional holdout (``holdout.npz`` beside the model) is what the accuracy gate
    judges every bundle of this model on; it must not overlap the samples, which
    calibrate the quantizers. The optional companion is the same model exported in the
    other format (an .onnx beside a .tflite): it must serve the same tensors and agree
    with the model on the samples; ONNX profiles then build from the ONNX file and
    TFLite profiles from the .tflite.
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
    inputs = inspection.signature.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise InvalidRequestError("model: must have exactly one 2-D input [batch, features]")
    samples = _load_samples(samples_bytes)
    width = inputs[0].shape[1]
    if width not in (-1, samples.shape[1]):
        raise InvalidRequestError(
            f"samples: width {samples.shape[1]} does not match the model input "
            f"{inputs[0].name} width {width}"
        )

    if holdout_bytes is not None:
        _check_holdout(holdout_bytes, samples.shape[1])
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
    samples_path = directory / "samples.npy"
    atomic_write(model_path, model_bytes)
    atomic_write(samples_path, samples_bytes)
    if holdout_bytes is not None:
        atomic_write(directory / "holdout.npz", holdout_bytes)
    if companion is not None:
        atomic_write(directory / f"model.{companion.format}", companion.data)
    model = ModelVersion(
        name=name,
        version=version,
        sha256=inspection.sha256,
        size_bytes=inspection.size_bytes,
        path=str(model_path),
        samples_path=str(samples_path),
        signature=schema.to_builtins(inspection.signature),
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
