"""Tensor signatures and the Open Inference Protocol (KServe v2) tensor encoding.

The agent's local endpoint and every client of it (the demo, tests, applications)
encode tensors the same way, so the mapping lives in the contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet.schema import Open

# Open Inference Protocol datatype names <-> numpy dtypes.
OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_OIP: dict[np.dtype[Any], str] = {v: k for k, v in OIP_TO_NUMPY.items()}


class TensorSpec(Open, frozen=True, kw_only=True):
    """One model input or output: name, OIP datatype, shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: list[int]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` fits this spec, treating -1 as any size."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class ModelSignature(Open, frozen=True, kw_only=True):
    """Inputs and outputs of a model, as the runtime sees them."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def oip_datatype(dtype: np.dtype[Any]) -> str:
    """OIP datatype name for a numpy dtype; ``ValueError`` when there is none."""
    try:
        return NUMPY_TO_OIP[np.dtype(dtype)]
    except KeyError as e:
        raise ValueError(f"no Open Inference Protocol datatype for {dtype}") from e


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """An OIP tensor object (row-major flattened data) for ``array``."""
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": oip_datatype(array.dtype),
        "data": array.reshape(-1).tolist(),
    }


def decode_tensor(obj: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    """Turn an OIP tensor object into (name, array); ``ValueError`` says what is wrong."""
    if not isinstance(obj, Mapping):
        raise ValueError("tensor must be a JSON object")
    name = obj.get("name")
    datatype = obj.get("datatype")
    shape = obj.get("shape")
    data = obj.get("data")
    if not isinstance(name, str) or not name:
        raise ValueError("tensor needs a non-empty 'name'")
    if datatype not in OIP_TO_NUMPY:
        raise ValueError(f"tensor {name!r}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r}: 'shape' must be a list of non-negative integers")
    if not isinstance(data, list):
        raise ValueError(f"tensor {name!r}: 'data' must be a list")
    try:
        array = np.asarray(data, dtype=OIP_TO_NUMPY[datatype])
    except (TypeError, ValueError) as e:
        raise ValueError(f"tensor {name!r}: data is not {datatype}") from e
    expected = int(np.prod(shape)) if shape else 1
    flat = array.reshape(-1)
    if flat.size != expected:
        raise ValueError(f"tensor {name!r}: {flat.size} values do not fill shape {shape}")
    return name, flat.reshape(shape)


def top1_classes(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The predicted class of every row: argmax of the first 2-D float output (scores or
    probabilities), else the first integer output (labels); ``ValueError`` if neither.

    The converters' gate and the agent's shadow comparison judge agreement with this one
    rule, so a candidate is compared the same way before and after it ships.
    """
    for value in outputs.values():
        if value.ndim == 2 and np.issubdtype(value.dtype, np.floating):
            return np.argmax(value, axis=1).astype(np.int64)
    for value in outputs.values():
        if np.issubdtype(value.dtype, np.integer):
            return value.reshape(len(value), -1)[:, 0].astype(np.int64)
    raise ValueError("model has no score or label output to compare")
