"""ONNX candidates for one profile, made with onnxruntime.quantization.

Which recipe wins depends on the graph and the CPU (static QDQ was 1.5-1.6x faster
on the digits MLPs here, dynamic int8 made CNNs 3-4x slower), so every recipe the
profile allows is built and measured; none is assumed better.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from edgefleet.converters.calibration import ArrayReader, calibration_hash, range_cache_path
from edgefleet.converters.candidate import Candidate
from edgefleet.converters.errors import CandidateSkipped, ConversionError
from edgefleet.converters.onnx_ml import ml_estimator_ops
from edgefleet.profile import FirmwareProfile

logger = logging.getLogger(__name__)

CORE_OPS = ["Conv", "MatMul", "Gemm"]
# (name, op types or None for every quantizable op, calibration method)
STATIC_RECIPES: list[tuple[str, list[str] | None, CalibrationMethod]] = [
    ("int8-qdq-core-minmax", CORE_OPS, CalibrationMethod.MinMax),
    ("int8-qdq-all-minmax", None, CalibrationMethod.MinMax),
    ("int8-qdq-core-entropy", CORE_OPS, CalibrationMethod.Entropy),
    ("int8-qdq-core-percentile", CORE_OPS, CalibrationMethod.Percentile),
]


def normalise(model_bytes: bytes) -> bytes:
    """Check the model and run ``quant_pre_process``; skip symbolic shapes if that fails."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-pre-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes)
        for skip_symbolic in (False, True):
            try:
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
                data = dst.read_bytes()
                onnx.checker.check_model(onnx.load_from_string(data))
                return data
            except Exception as e:  # shape inference raises many kinds of errors
                logger.info("pre-process failed skip_symbolic=%s error=%s", skip_symbolic, e)
    logger.warning("pre-process failed; quantizing the model as registered")
    return model_bytes


def _activation_type(profile: FirmwareProfile) -> QuantType:
    # x86 int8 kernels want unsigned activations (VPMADDUBSW); ARM prefers symmetric int8.
    return QuantType.QUInt8 if profile.arch == "x86_64" else QuantType.QInt8


def _static(
    model_bytes: bytes,
    input_name: str,
    calibration: np.ndarray,
    *,
    name: str,
    op_types: list[str] | None,
    method: CalibrationMethod,
    profile: FirmwareProfile,
    model_sha256: str,
    cache_dir: Path | None,
) -> Candidate:
    calib_sha = calibration_hash(calibration)
    cache = range_cache_path(
        cache_dir,
        model_sha256=model_sha256,
        calib_sha256=calib_sha,
        recipe=f"{method.name}:{','.join(op_types or ['*'])}",
    )
    activation = _activation_type(profile)
    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes)
        quantize_static(
            str(src),
            str(dst),
            ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            calibration_cache_path=cache,
        )
        data = dst.read_bytes()
    recipe: dict[str, Any] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "op_types": op_types or "all",
        "calibration": method.name,
        "activation_type": activation.name,
        "weight_type": "QInt8",
        "calibration_sha256": calib_sha,
        "calibration_samples": len(calibration),
    }
    return Candidate(name=name, format="onnx", precision="int8", data=data, recipe=recipe)


def _dynamic(model_bytes: bytes) -> Candidate:
    with tempfile.TemporaryDirectory(prefix="edgefleet-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes)
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8
        )
        data = dst.read_bytes()
    recipe = {"tool": "onnxruntime.quantization.quantize_dynamic", "op_types": ["MatMul"]}
    return Candidate(
        name="int8-dynamic-matmul", format="onnx", precision="int8", data=data, recipe=recipe
    )


def _drop_noop_float_casts(model: onnx.ModelProto) -> None:
    """Turn Cast(float -> float) on a float graph input into Identity.

    skl2onnx starts graphs with such a cast; the fp16 converter leaves its target type
    at float32, which then meets fp16 weights and fails to load.
    """
    float_inputs = {
        i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (
            node.op_type == "Cast"
            and node.input[0] in float_inputs
            and to == onnx.TensorProto.FLOAT
        ):
            node.op_type = "Identity"
            del node.attribute[:]


def _fp16(model_bytes: bytes) -> Candidate:
    from onnxconverter_common import float16

    model = onnx.load_from_string(model_bytes)
    _drop_noop_float_casts(model)
    # Float I/O stays float32 so clients and the drift statistics see the same tensors.
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    recipe = {"tool": "onnxconverter_common.float16", "keep_io_types": True}
    return Candidate(
        name="fp16",
        format="onnx",
        precision="fp16",
        data=converted.SerializeToString(),
        recipe=recipe,
    )


def onnx_candidates(
    model_bytes: bytes,
    profile: FirmwareProfile,
    *,
    input_name: str,
    calibration: np.ndarray | None,
    model_sha256: str,
    cache_dir: Path | None = None,
) -> Iterator[Candidate | ConversionError]:
    """Every ONNX candidate the profile's precisions allow, fp32 last as the fallback.

    A recipe that fails to build yields a ``ConversionError`` naming it, so the build
    reports it in the table instead of stopping.
    """
    model = onnx.load_from_string(model_bytes)
    ops = {n.op_type for n in model.graph.node}
    ml_ops = ml_estimator_ops(model)
    if ml_ops:  # classic ML (scikit-learn & co): the quantizers know none of these ops
        why = f"does not apply to ONNX-ML ops ({', '.join(ml_ops)})"
        if "int8" in profile.precisions:
            yield CandidateSkipped("int8", f"onnxruntime.quantization {why}")
        if "fp16" in profile.precisions:
            yield CandidateSkipped("fp16", f"float16 conversion {why}")
    elif "int8" in profile.precisions:
        if calibration is None:
            yield ConversionError("int8-qdq: no calibration samples")
        else:
            prepared = normalise(model_bytes)
            for name, op_types, method in STATIC_RECIPES:
                if op_types is not None and not ops & set(op_types):
                    continue
                try:
                    yield _static(
                        prepared,
                        input_name,
                        calibration,
                        name=name,
                        op_types=op_types,
                        method=method,
                        profile=profile,
                        model_sha256=model_sha256,
                        cache_dir=cache_dir,
                    )
                except Exception as e:  # the quantizer raises many kinds of errors
                    yield ConversionError(f"{name}: {e}")
        if "MatMul" in ops:
            try:
                yield _dynamic(model_bytes)
            except Exception as e:  # the quantizer raises many kinds of errors
                yield ConversionError(f"int8-dynamic-matmul: {e}")
    if "fp16" in profile.precisions and not ml_ops:
        try:
            yield _fp16(model_bytes)
        except Exception as e:  # the converter raises many kinds of errors
            yield ConversionError(f"fp16: {e}")
    if "fp32" in profile.precisions:
        yield Candidate(
            name="fp32", format="onnx", precision="fp32", data=model_bytes, recipe={"tool": "none"}
        )
