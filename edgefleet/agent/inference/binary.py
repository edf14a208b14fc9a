"""OIP's binary tensor data extension, as Triton and KServe accept it.

Why: a 1 MB input as JSON costs a text encoding on the client, a parse into a million
Python floats here and a copy into numpy; as raw bytes it costs one ``np.frombuffer``.

The shape of a binary request (and of a binary answer, the same way round):

* the ``Inference-Header-Content-Length`` header gives the length of the JSON header
  at the start of the body; the rest of the body is raw tensor bytes;
* an input whose ``parameters`` carry ``"binary_data_size": n`` takes the next ``n``
  of those bytes, in the order the inputs are listed, little-endian, row-major, no
  padding (``BOOL`` one byte, 0 or 1); it carries no ``data``;
* ``"parameters": {"binary_data_output": true}`` on the request asks for every output
  as raw bytes, ``"parameters": {"binary_data": true}`` on one of ``outputs`` for that
  output; the answer names each such output's ``binary_data_size`` and appends its bytes
  after the JSON header, whose length goes back in ``Inference-Header-Content-Length``.

Everything a client declares is checked against the body that actually arrived (itself
bounded by the endpoint's ``max_body_bytes``) before any array is made: a header length
outside the body, a size that is not dtype x shape, bytes missing or left over are each
refused with a ``ValueError`` whose reason names the input (the endpoint answers 400
with it). ``BYTES`` tensors are not served here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgefleet.tensors import MAX_RANK, OIP_TO_NUMPY, oip_datatype, shown

HEADER = "Inference-Header-Content-Length"
"""The request and response header giving the JSON header's length in bytes."""
CONTENT_TYPE = "application/octet-stream"

_LITTLE = {name: dtype.newbyteorder("<") for name, dtype in OIP_TO_NUMPY.items()}


class BinaryAnswer(dict[str, Any]):
    """An infer answer's JSON header, with the raw bytes of its binary outputs in
    ``blobs`` (in output order) to send after it."""

    def __init__(self, header: dict[str, Any], blobs: list[memoryview]) -> None:
        super().__init__(header)
        self.blobs = blobs


def header_length(raw: str | None, body_length: int) -> int | None:
    """The JSON header's length from ``Inference-Header-Content-Length`` (None when the
    header is absent: the whole body is JSON); ``ValueError`` unless it is a decimal
    integer within the body."""
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise ValueError(f"{HEADER} must be a non-negative integer, got {shown(raw)}")
    length = int(text)
    if length > body_length:
        raise ValueError(
            f"{HEADER} of {length} bytes exceeds the body of {body_length} bytes",
        )
    return length


def binary_size(obj: dict[str, Any], name: str) -> int | None:
    """The ``binary_data_size`` parameter of tensor object ``obj`` (None: JSON data)."""
    parameters = obj.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise ValueError(f"input {name!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise ValueError(
            f"input {name!r}: binary_data_size must be a non-negative integer, got {shown(size)}",
        )
    return size


def _checked_shape(name: str, shape: Any) -> list[int]:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ValueError(
            f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} non-negative integers",
        )
    return shape


def decode_binary_input(
    obj: dict[str, Any],
    name: str,
    datatype: str,
    size: int,
    tail: memoryview,
    offset: int,
    *,
    allow_non_finite: bool,
) -> np.ndarray:
    """The array input ``name`` declares from ``tail[offset:offset + size]``, without a copy.

    ``datatype`` has been checked against the model's; here the shape, the size against
    dtype x shape and against the bytes that arrived, booleans (0 or 1) and, unless
    allowed, non-finite floats.
    """
    if "data" in obj:
        raise ValueError(f"input {name!r}: both 'data' and binary_data_size given")
    shape = _checked_shape(name, obj.get("shape"))
    dtype = _LITTLE.get(datatype)
    if dtype is None:
        raise ValueError(f"input {name!r}: datatype {shown(datatype)} has no binary form here")
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise ValueError(
            f"input {name!r}: binary_data_size {size} != {expected} bytes "
            f"({datatype} x shape {shape})",
        )
    available = len(tail) - offset
    if size > available:
        raise ValueError(
            f"input {name!r}: binary_data_size {size} but only {available} bytes of "
            "binary data remain in the body",
        )
    array = np.frombuffer(tail, dtype=dtype, count=size // dtype.itemsize, offset=offset)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise ValueError(f"input {name!r}: BOOL bytes must be 0 or 1")
    if not allow_non_finite and dtype.kind == "f" and not all_finite(array):
        raise ValueError(f"tensor {name!r}: non-finite value (NaN or Infinity)")
    if not dtype.isnative:  # a big-endian device: the runtime wants native bytes
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def all_finite(array: np.ndarray) -> bool:
    """Whether ``array`` holds no NaN or ±Inf (17 µs for 1 MB of FP32 here: a float32
    sum takes four times that, a float64 one eight)."""
    return bool(np.isfinite(array).all())


def wants_binary(request: dict[str, Any]) -> bool:
    """Whether the request asks for every output as binary (``binary_data_output``)."""
    parameters = request.get("parameters")
    return isinstance(parameters, dict) and parameters.get("binary_data_output") is True


def encode_binary_output(name: str, array: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """An output's tensor object (no ``data``) and its little-endian bytes."""
    datatype = oip_datatype(array.dtype)
    flat = np.ascontiguousarray(array, dtype=_LITTLE[datatype]).reshape(-1)
    blob = memoryview(flat.view(np.uint8).data)
    header = {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": blob.nbytes},
    }
    return header, blob
