"""The fp32 ONNX build: the float model itself, checked against the profile.

This is the fallback every onnxruntime profile accepts; quantized candidates
(static QDQ int8, fp16, ...) are measured against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet.converters.errors import ConversionError
from edgefleet.converters.onnx_inspect import inspect_onnx
from edgefleet.profile import FirmwareProfile
from edgefleet.tensors import ModelSignature


@dataclass(frozen=True)
class BuiltArtifact:
    """A model artifact ready to go into a bundle for one profile."""

    data: bytes
    filename: str
    runtime: str
    precision: str
    signature: ModelSignature
    lineage: dict[str, Any] = field(default_factory=dict)


def build_fp32_onnx(model_bytes: bytes, profile: FirmwareProfile) -> BuiltArtifact:
    """Check the float model fits ``profile`` and return it unchanged as the artifact."""
    if profile.runtime.name != "onnxruntime" or "onnx" not in profile.formats:
        raise ConversionError(f"profile {profile.name} does not run ONNX models")
    if "fp32" not in profile.precisions:
        raise ConversionError(f"profile {profile.name} does not accept fp32 models")
    inspection = inspect_onnx(model_bytes)
    if inspection.size_bytes > profile.max_model_bytes:
        raise ConversionError(
            f"model is {inspection.size_bytes} bytes; profile {profile.name} allows "
            f"{profile.max_model_bytes}"
        )
    return BuiltArtifact(
        data=model_bytes,
        filename="model.onnx",
        runtime="onnxruntime",
        precision="fp32",
        signature=inspection.signature,
        lineage={
            "source_sha256": inspection.sha256,
            "converter": "onnx-fp32",
            "opsets": inspection.opsets,
            "op_histogram": inspection.op_histogram,
        },
    )
