"""Open Inference Protocol tensor encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet import schema
from edgefleet.tensors import (
    ModelSignature,
    TensorSpec,
    decode_tensor,
    encode_tensor,
    run_in_batches,
    top1_classes,
)


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
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": ["a"]}, "must be integers"),
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


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("FP32", ["NaN", 1.0], 'FP32 data must be numbers, got a string "NaN"'),
        ("FP32", [1.0, "1.5"], 'got a string "1.5"'),
        ("FP32", [1.0, True], "FP32 data must be numbers, got true"),
        ("FP32", [None, 1.0], "got null"),
        ("FP32", [{}, 1.0], "got an object"),
        ("INT64", [1, 2.5], "INT64 data must be integers, got 2.5"),
        ("INT8", [1, 300], "out of range for INT8"),
        ("UINT8", [-1, 0], "out of range for UINT8"),
        ("BOOL", [1, 0], "BOOL data must be true or false, got 1"),
        ("FP32", [10**400, 0], "out of range for FP32"),
        ("FP32", [[1.0], [2.0, 3.0]], "ragged"),
        ("FP32", [[1.0], 2.0], "mixes lists and values"),
    ],
)
def test_values_of_the_wrong_json_type_are_refused_naming_the_tensor(
    datatype: str, data: list[object], fragment: str
) -> None:
    obj = {"name": "pixels", "datatype": datatype, "shape": [2], "data": data}
    with pytest.raises(ValueError) as caught:
        decode_tensor(obj)
    assert str(caught.value).startswith("tensor 'pixels': ")
    assert fragment in str(caught.value)


def test_nested_data_is_read_row_major() -> None:
    obj = {"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}
    np.testing.assert_array_equal(decode_tensor(obj)[1], [[1, 2], [3, 4]])


def test_non_finite_values_are_refused_only_when_asked() -> None:
    obj = json.loads('{"name": "x", "datatype": "FP32", "shape": [3], "data": [NaN, -Infinity, 1]}')
    assert np.isnan(decode_tensor(obj)[1][0])
    with pytest.raises(ValueError, match="tensor 'x': non-finite value"):
        decode_tensor(obj, allow_non_finite=False)


def test_a_number_beyond_the_float_types_range_counts_as_non_finite() -> None:
    obj = {"name": "x", "datatype": "FP16", "shape": [1], "data": [70000]}
    assert np.isinf(decode_tensor(obj)[1][0])
    with pytest.raises(ValueError, match="beyond FP16's range"):
        decode_tensor(obj, allow_non_finite=False)


@pytest.mark.parametrize(
    "shape",
    [[True, 2], [2, -1], [1] * 33, "2"],
)
def test_shapes_that_are_not_small_lists_of_counts_are_refused(shape: object) -> None:
    with pytest.raises(ValueError, match="'shape' must be a list"):
        decode_tensor({"name": "x", "datatype": "FP32", "shape": shape, "data": [1.0, 2.0]})


def test_an_empty_tensor_with_absurd_dimensions_is_refused() -> None:
    obj = {"name": "x", "datatype": "FP32", "shape": [0, 2**70], "data": []}
    with pytest.raises(ValueError, match="cannot hold shape"):
        decode_tensor(obj)


def test_one_score_column_is_a_decision_at_the_threshold_not_an_argmax() -> None:
    scores = np.array([[0.2], [0.7], [0.5]], np.float32)
    np.testing.assert_array_equal(top1_classes({"speech": scores}), [0, 1, 1])
    np.testing.assert_array_equal(top1_classes({"speech": scores}, threshold=0.6), [0, 1, 0])


def test_a_fixed_batch_spec_accepts_any_row_count_and_runs_in_padded_batches() -> None:
    signature = schema.convert(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [4, 2]}],
            "batch": 4,
        },
        ModelSignature,
    )
    spec = signature.inputs[0]
    assert spec.accepts_shape([9, 2], batch=4) and not spec.accepts_shape([9, 2])
    sizes: list[int] = []

    def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(feeds["x"]))
        return {"y": feeds["x"] + 1}

    x = np.arange(18, dtype=np.float32).reshape(9, 2)
    out = run_in_batches(infer, {"x": x}, signature)
    assert sizes == [4, 4, 4]
    np.testing.assert_array_equal(out["y"], x + 1)
