"""Reads what a .tflite model is before anything is built from it.

The signature comes from ai-edge-litert's interpreter, as the device's runtime sees
it: every input and output with its name, dtype and shape, symbolic dims (the
``shape_signature``) as -1. The op list comes from the flatbuffer itself (the schema
classes that ship with ai-edge-litert), so the profile's op set can be checked
before any candidate is built.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.converters.candidate import IoQuantization
from edgefleet.converters.errors import ConversionError
from edgefleet.tensors import ModelSignature, TensorSpec, oip_datatype


@dataclass(frozen=True)
class TfliteInspection:
    """What registration and the build need to know about a .tflite model.

    ``opsets`` is always empty (TFLite has none); it is here so code that reads an
    ``OnnxInspection`` reads this too.
    """

    sha256: str
    size_bytes: int
    op_histogram: dict[str, int]
    signature: ModelSignature
    # Tensor name -> scale and zero-point, for inputs and outputs that are quantized.
    quantization: dict[str, IoQuantization] = field(default_factory=dict)
    signature_keys: list[str] = field(default_factory=list)
    opsets: dict[str, int] = field(default_factory=dict)

    @property
    def ops(self) -> set[str]:
        return set(self.op_histogram)


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as s

    return {
        value: name
        for name, value in vars(s.BuiltinOperator).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def tflite_ops(data: bytes) -> dict[str, int]:
    """Op name -> how many times the model uses it, over every subgraph; custom ops as
    ``CUSTOM:<name>``."""
    from ai_edge_litert import schema_py_generated as s

    model = s.Model.GetRootAs(data, 0)
    names = _builtin_names()
    codes: list[str] = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == s.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    counts: Counter[str] = Counter()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return dict(counts)


def _spec(detail: dict[str, Any]) -> TensorSpec:
    name = str(detail["name"])
    try:
        datatype = oip_datatype(np.dtype(detail["dtype"]))
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{name}: unsupported tensor type {detail['dtype']}") from e
    dims = detail.get("shape_signature")
    if dims is None or len(dims) != len(detail["shape"]):
        dims = detail["shape"]
    return TensorSpec(name=name, datatype=datatype, shape=[int(d) for d in dims])


def _quantization(detail: dict[str, Any]) -> IoQuantization | None:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    if scales is None or len(scales) == 0:
        return None
    dtype = np.dtype(detail["dtype"]).name
    return IoQuantization(dtype, float(scales[0]), int(params["zero_points"][0]))


def inspect_tflite(model_bytes: bytes) -> TfliteInspection:
    """Hash, op histogram, signature and boundary quantization of a .tflite model.

    Raises:
        ConversionError: The interpreter cannot load the model (corrupt flatbuffer,
            an op this ai-edge-litert does not have), naming why.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        # The interpreter verifies the flatbuffer before anything else reads it.
        interpreter: Any = Interpreter(model_content=model_bytes, num_threads=1)
        interpreter.allocate_tensors()
        ops = tflite_ops(model_bytes)
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        signature_keys = sorted(interpreter.get_signature_list())
    except (ValueError, RuntimeError, IndexError, TypeError, struct.error) as e:
        # UnicodeDecodeError (a ValueError): a tensor name that is not UTF-8.
        raise ConversionError(f"not a loadable TFLite model: {e}") from e
    quantization = {
        str(d["name"]): q for d in [*inputs, *outputs] if (q := _quantization(d)) is not None
    }
    return TfliteInspection(
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        size_bytes=len(model_bytes),
        op_histogram=ops,
        signature=ModelSignature(
            inputs=[_spec(d) for d in inputs], outputs=[_spec(d) for d in outputs]
        ),
        quantization=quantization,
        signature_keys=signature_keys,
    )
