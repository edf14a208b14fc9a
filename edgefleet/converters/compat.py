"""Can the profile's runtime version run this model at all? Asked before any conversion.

Building candidates for a model the device cannot execute wastes minutes and, worse,
can pass a gate run on a newer runtime than the device has. So ops are checked against
the opset range (ONNX) or builtin op set (TFLite) the profile states for its runtime.
"""

from __future__ import annotations

import logging

import onnx
from onnx.defs import SchemaError

from edgefleet.converters.errors import ConversionError, UnsupportedOpError
from edgefleet.profile import FirmwareProfile

logger = logging.getLogger(__name__)

_ML_DOMAIN = "ai.onnx.ml"


def _exists_at(op_type: str, domain: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, domain)
    except SchemaError:
        return False
    return True


def check_onnx_ops(model: onnx.ModelProto, profile: FirmwareProfile) -> None:
    """Refuse ops or opsets the profile's onnxruntime version cannot run, naming them."""
    spec = profile.onnx
    if spec is None:
        return
    runtime = f"{profile.runtime.name} {profile.runtime.version}"
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    limits = {"": spec.opset_max, _ML_DOMAIN: spec.ml_opset_max}
    unsupported: set[str] = set()
    for node in model.graph.node:
        domain = node.domain or ""
        if node.op_type in spec.unsupported_ops:
            unsupported.add(node.op_type)
        elif domain in limits and not _exists_at(node.op_type, domain, limits[domain]):
            unsupported.add(node.op_type if not domain else f"{domain}.{node.op_type}")
    if unsupported:
        raise UnsupportedOpError(sorted(unsupported), runtime=runtime)
    if opsets.get("", spec.opset_min) < spec.opset_min:
        raise ConversionError(f"model opset {opsets['']} is below {runtime}'s {spec.opset_min}")
    if opsets.get("", 0) > spec.opset_max:
        # Every op exists at the runtime's opset: convert the declared version down.
        logger.info("opset lowered from=%d to=%d", opsets[""], spec.opset_max)


def lower_opset(model: onnx.ModelProto, profile: FirmwareProfile) -> onnx.ModelProto:
    """The model at the profile's highest opset when it declares a newer one."""
    spec = profile.onnx
    declared = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    if spec is None or declared <= spec.opset_max:
        return model
    try:
        return onnx.version_converter.convert_version(model, spec.opset_max)
    except (RuntimeError, ValueError) as e:
        raise ConversionError(
            f"opset {declared} cannot be lowered to {spec.opset_max} for {profile.name}: {e}"
        ) from e


def check_tflite_ops(ops: set[str], profile: FirmwareProfile) -> None:
    """Refuse TFLite builtins outside the profile's op set, naming them."""
    if profile.tflite is None:
        raise ConversionError(f"profile {profile.name} has no TFLite op set")
    missing = sorted(ops - set(profile.tflite.builtin_ops))
    if missing:
        raise UnsupportedOpError(
            missing, runtime=f"{profile.runtime.name} {profile.runtime.version}"
        )
