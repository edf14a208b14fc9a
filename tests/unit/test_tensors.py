"""Open Inference Protocol tensor encoding."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.tensors import TensorSpec, decode_tensor, encode_tensor


def test_tensor_round_trips_through_oip_encoding() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    name, decoded = decode_tensor(encode_tensor("input", array))
    assert name == "input"
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, "unknown datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}, "do not fill"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": ["a"]}, "INT32 data must be integers"),
        ({"name": "", "datatype": "FP32", "shape": [1], "data": [1]}, "name"),
        ({"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}, "shape"),
    ],
)
def test_bad_tensors_are_refused_with_a_reason(obj: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        decode_tensor(obj)


def test_spec_accepts_dynamic_batch_only() -> None:
    spec = TensorSpec(name="input", datatype="FP32", shape=[-1, 64])
    assert spec.accepts_shape([5, 64])
    assert not spec.accepts_shape([5, 63])
    assert not spec.accepts_shape([64])
