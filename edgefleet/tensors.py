"""Tensor signatures and the Open Inference Protocol (KServe v2) tensor encoding.

The agent's local endpoint and every client of it (the demo, tests, applications)
encode tensors the same way, so the mapping lives in the contract.

Decoding is strict about what JSON puts in ``data``, flat or nested (regular nesting
only): float tensors take JSON numbers, integer tensors integers within the datatype's
range, ``BOOL`` tensors ``true``/``false``. Strings, nulls, objects and booleans in a
numeric tensor are refused, so ``"NaN"`` or ``"1.5"`` never turn into a number. The
only non-finite floats JSON can carry are the non-standard tokens ``NaN``,
``Infinity`` and ``-Infinity`` (Python's ``json`` reads and writes them) and numbers
beyond the datatype's range, which become ±Inf; ``allow_non_finite=False`` refuses
them (the agent's default policy, see ``edgefleet.agent.inference.server``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
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
    """One model input or output: name, OIP datatype, shape (-1 for a dynamic axis).

    ``dim_names`` keeps the model's names of its symbolic axes (``"batch"``, ``"N"``),
    ``""`` where the axis is fixed or unnamed, so the signature reads as the model does.
    """

    name: str
    datatype: str
    shape: list[int]
    dim_names: list[str] | None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of the OIP datatype."""
        return OIP_TO_NUMPY[self.datatype]

    def accepts_shape(self, shape: Sequence[int], *, batch: int | None = None) -> bool:
        """True when ``shape`` fits this spec, treating -1 as any size.

        With ``batch`` (the signature's fixed batch) the leading axis of a batched
        input takes any row count: the rows are split and padded to the batch.
        """
        want = list(self.shape)
        if batch is not None and want and want[0] == batch:
            want[0] = -1
        return len(shape) == len(want) and all(
            w in (-1, got) for w, got in zip(want, shape, strict=True)
        )

    def describe(self) -> str:
        """``FP32[-1, 64]``: the datatype and shape, as error messages show them."""
        return f"{self.datatype}{list(self.shape)}"


class ModelSignature(Open, frozen=True, kw_only=True):
    """Inputs and outputs of a model, as the runtime sees them.

    ``batch`` is the fixed batch size the model was exported with (every batched input's
    leading axis), when it has one: callers send any number of rows, and the runtime runs
    them in batches of exactly that size, padding the last (``run_in_batches``).
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch: int | None = None

    def input(self, name: str) -> TensorSpec:
        """The input named ``name``; ``KeyError`` when there is none."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def batched(self, spec: TensorSpec) -> bool:
        """True when ``spec``'s leading axis is the fixed batch."""
        return self.batch is not None and bool(spec.shape) and spec.shape[0] == self.batch


def run_in_batches(
    infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    feeds: dict[str, np.ndarray],
    signature: ModelSignature,
) -> dict[str, np.ndarray]:
    """Run ``feeds`` through ``infer`` in batches of exactly ``signature.batch`` rows.

    The batched inputs' rows are split into batches of the fixed size, the last padded by
    repeating its final row; outputs whose leading axis is the batch are concatenated and
    cut back to the rows sent. Without a fixed batch, or when the rows are exactly one
    batch, ``feeds`` go through as they are.

    Raises:
        ValueError: The batched inputs disagree on the row count, or an output without a
            batch axis would have to be joined across batches.
    """
    batch = signature.batch
    if batch is None:
        return infer(feeds)
    batched = [s.name for s in signature.inputs if signature.batched(s) and s.name in feeds]
    counts = {feeds[name].shape[0] for name in batched}
    if len(counts) > 1:
        raise ValueError(f"inputs {batched} have different row counts {sorted(counts)}")
    rows = counts.pop() if counts else batch
    if rows == batch:
        return infer(feeds)
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, rows, batch):
        feed = dict(feeds)
        for name in batched:
            chunk = feeds[name][start : start + batch]
            if len(chunk) < batch:
                pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
                chunk = np.concatenate([chunk, pad])
            feed[name] = chunk
        pieces.append(infer(feed))
    out: dict[str, np.ndarray] = {}
    for name in pieces[0]:
        parts = [np.asarray(p[name]) for p in pieces]
        if any(p.ndim == 0 or p.shape[0] != batch for p in parts):
            raise ValueError(f"output {name!r} has no batch axis to join {rows} rows by")
        out[name] = np.concatenate(parts)[:rows]
    return out


def oip_datatype(dtype: np.dtype[Any]) -> str:
    """OIP datatype name for a numpy dtype; ``ValueError`` when there is none."""
    try:
        return NUMPY_TO_OIP[np.dtype(dtype)]
    except KeyError as e:
        raise ValueError(f"no Open Inference Protocol datatype for {dtype}") from e


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """An OIP tensor object for ``array``, its data flattened row-major.

    Returns:
        ``{"name", "shape", "datatype", "data"}``, ready for ``json.dumps``.

    Raises:
        ValueError: The array's dtype has no OIP datatype.
    """
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": oip_datatype(array.dtype),
        "data": array.reshape(-1).tolist(),
    }


MAX_RANK = 32
"""Most dimensions a decoded tensor may have (numpy's own limit is 64)."""

# The Python types json.loads gives for the JSON values each kind of tensor accepts
# (bool is not int here: ``true`` in an FP32 tensor is refused, not read as 1.0).
_NUMBERS = frozenset({int, float})
_INTEGERS = frozenset({int})
_BOOLEANS = frozenset({bool})


def _accepted_types(datatype: str) -> frozenset[type]:
    if datatype == "BOOL":
        return _BOOLEANS
    if datatype.startswith("FP"):
        return _NUMBERS
    return _INTEGERS


def shown(value: object, limit: int = 40) -> str:
    """``value`` as JSON (or its repr), cut to ``limit`` characters: for error messages
    that quote what a client sent."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _leaves(name: str, data: list[Any]) -> tuple[list[Any], set[type]]:
    """The values of flat or regularly nested ``data``, row-major, and their types;
    ``ValueError`` for ragged nesting, lists mixed with values, or nesting deeper than
    ``MAX_RANK``."""
    level = data
    for _ in range(MAX_RANK):
        types = set(map(type, level))
        if list not in types:
            return level, types
        if types != {list} or len(set(map(len, level))) != 1:
            raise ValueError(f"tensor {name!r}: nested 'data' is ragged or mixes lists and values")
        level = list(chain.from_iterable(level))
    raise ValueError(f"tensor {name!r}: 'data' nests deeper than {MAX_RANK} levels")


def _value_error(name: str, datatype: str, values: list[Any], accepted: frozenset[type]) -> str:
    bad = next(v for v in values if type(v) not in accepted)
    want = {_NUMBERS: "numbers", _INTEGERS: "integers", _BOOLEANS: "true or false"}[accepted]
    if isinstance(bad, str):
        got = f"a string {shown(bad)}"
    elif isinstance(bad, dict):
        got = "an object"
    else:  # true/false, null, or a number of the wrong kind: as JSON wrote it
        got = shown(bad)
    return f"tensor {name!r}: {datatype} data must be {want}, got {got}"


def decode_tensor(
    obj: Mapping[str, Any], *, allow_non_finite: bool = True
) -> tuple[str, np.ndarray]:
    """Turn an OIP tensor object, as a client sent it, into a numpy array.

    Flat and regularly nested ``data`` are both accepted. Every check happens before the
    model sees the tensor, and every error names the tensor, so a client learns which
    input it got wrong.

    Args:
        obj: The tensor object, as decoded from JSON.
        allow_non_finite: False also refuses NaN and ±Inf in float tensors (including
            numbers beyond the datatype's range, which would become ±Inf).

    Returns:
        (name, array) with the array in the stated datatype and shape.

    Raises:
        ValueError: A missing or invalid name, datatype or shape; ragged or too deeply
            nested data; a value count that does not fill the shape; a value of the wrong
            JSON kind or out of the datatype's range; or a refused non-finite value.
    """
    if not isinstance(obj, Mapping):
        raise ValueError("tensor must be a JSON object")
    name = obj.get("name")
    datatype = obj.get("datatype")
    shape = obj.get("shape")
    data = obj.get("data")
    if not isinstance(name, str) or not name:
        raise ValueError("tensor needs a non-empty 'name'")
    if not isinstance(datatype, str) or datatype not in OIP_TO_NUMPY:
        raise ValueError(f"tensor {name!r}: unknown datatype {shown(datatype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ValueError(
            f"tensor {name!r}: 'shape' must be a list of at most {MAX_RANK} non-negative integers"
        )
    if not isinstance(data, list):
        raise ValueError(f"tensor {name!r}: 'data' must be a list")
    values, types = _leaves(name, data)
    expected = math.prod(shape)
    if len(values) != expected:
        raise ValueError(f"tensor {name!r}: {len(values)} values do not fill shape {shape}")
    accepted = _accepted_types(datatype)
    if not types <= accepted:
        raise ValueError(_value_error(name, datatype, values, accepted))
    dtype = OIP_TO_NUMPY[datatype]
    try:
        with np.errstate(over="ignore"):  # beyond a float type's range: ±Inf, judged below
            array = np.asarray(values, dtype=dtype)
    except OverflowError as e:  # an integer beyond the datatype's range
        raise ValueError(f"tensor {name!r}: a value is out of range for {datatype}") from e
    if not allow_non_finite and dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(
            f"tensor {name!r}: non-finite value (NaN, Infinity, or beyond {datatype}'s range)"
        )
    try:
        return name, array.reshape(shape)
    except (ValueError, OverflowError) as e:  # an empty tensor with absurd dimensions
        raise ValueError(f"tensor {name!r}: cannot hold shape {shown(shape)}") from e


def top1_classes(outputs: Mapping[str, np.ndarray], *, threshold: float = 0.5) -> np.ndarray:
    """The predicted class of every row of a model's outputs.

    The agent's shadow comparison and drift answers judge agreement with this one rule.

    Args:
        outputs: Output name -> array, as a runtime returned them.
        threshold: Where one score per row (a binary detector) decides class 1.

    Returns:
        One int64 class per row: the argmax of the first 2-D float output with several
        columns (scores or probabilities), or, for one score column, whether it reaches
        ``threshold`` (argmax over one column would always be 0); else the first integer
        output (labels).

    Raises:
        ValueError: The outputs hold neither a 2-D float nor an integer array.
    """
    for value in outputs.values():
        if value.ndim == 2 and np.issubdtype(value.dtype, np.floating):
            if value.shape[1] == 1:
                return (value[:, 0] >= threshold).astype(np.int64)
            return np.argmax(value, axis=1).astype(np.int64)
    for value in outputs.values():
        if np.issubdtype(value.dtype, np.integer):
            return value.reshape(len(value), -1)[:, 0].astype(np.int64)
    raise ValueError("model has no score or label output to compare")
