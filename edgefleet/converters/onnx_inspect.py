"""Reads what a float ONNX model is before anything is built from it."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from edgefleet.converters.errors import ConversionError
from edgefleet.tensors import ModelSignature, TensorSpec

_ONNX_TO_OIP: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.DOUBLE: "FP64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT16: "INT16",
    TensorProto.UINT16: "UINT16",
    TensorProto.INT32: "INT32",
    TensorProto.UINT32: "UINT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL",
}


@dataclass(frozen=True)
class OnnxInspection:
    sha256: str
    size_bytes: int
    opsets: dict[str, int]
    op_histogram: dict[str, int]
    signature: ModelSignature


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ConversionError(f"{value.name}: a {kind or 'untyped value'} is not a tensor")
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in _ONNX_TO_OIP:
        name = TensorProto.DataType.Name(tensor_type.elem_type)
        raise ConversionError(f"{value.name}: unsupported element type {name}")
    dims = list(tensor_type.shape.dim)
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]
    names = [d.dim_param if d.HasField("dim_param") else "" for d in dims]
    return TensorSpec(
        name=value.name,
        datatype=_ONNX_TO_OIP[tensor_type.elem_type],
        shape=shape,
        dim_names=names if any(names) else None,
    )


def fixed_batch(inputs: list[TensorSpec]) -> int | None:
    """The batch size the model was exported with: the leading axis every input of rank
    one or more fixes to the same size; ``None`` when any is dynamic or they differ."""
    leading = {spec.shape[0] for spec in inputs if spec.shape}
    if len(leading) != 1:
        return None
    size = leading.pop()
    return size if size > 0 else None


def inspect_onnx(model_bytes: bytes) -> OnnxInspection:
    """Hash, opsets, op histogram and signature; ``ConversionError`` if the model is invalid."""
    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, DecodeError, ValueError) as e:
        raise ConversionError(f"not a valid ONNX model: {e}") from e
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in model.graph.output]
    return OnnxInspection(
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        size_bytes=len(model_bytes),
        opsets={imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        op_histogram=dict(Counter(node.op_type for node in model.graph.node)),
        signature=ModelSignature(inputs=inputs, outputs=outputs, batch=fixed_batch(inputs)),
    )
