"""An ONNX and a TFLite export registered together must be the same model."""

from __future__ import annotations

import pytest

from edgefleet.converters.artifact_pair import compare_artifacts
from edgefleet.converters.errors import ConversionError
from edgefleet.converters.model_format import read_model
from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet.converters.tflite_candidates import finish_boundary
from edgefleet_demo.digits import DigitsModel, train_digits_model

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning", "ignore::UserWarning"
)


def test_an_onnx_model_and_its_tflite_export_agree(digits: DigitsModel) -> None:
    onnx_model = read_model(digits.onnx_bytes)
    tflite = read_model(onnx_to_float_tflite(digits.onnx_bytes)[0])
    report = compare_artifacts(tflite, onnx_model, digits.samples)  # either order
    assert report["rows"] == 256
    assert report["outputs"]["label"] == {"agreement": 1.0}
    assert report["outputs"]["probabilities"]["relative_error"] < 1e-4


def test_a_tflite_of_another_model_is_refused_as_not_the_same_model(digits: DigitsModel) -> None:
    other = train_digits_model(seed=1, hidden=(16,), max_iter=20)
    with pytest.raises(ConversionError, match="not the same model") as refused:
        compare_artifacts(
            read_model(digits.onnx_bytes),
            read_model(onnx_to_float_tflite(other.onnx_bytes)[0]),
            digits.samples,
        )
    assert "output label" in str(refused.value) or "output probabilities" in str(refused.value)


def test_exports_serving_different_tensor_names_are_refused_naming_them(
    digits: DigitsModel,
) -> None:
    tflite = onnx_to_float_tflite(digits.onnx_bytes)[0]
    renamed, _, _ = finish_boundary(tflite, names={"probabilities": "scores"}, integer_output=False)
    with pytest.raises(ConversionError, match="differ in outputs") as refused:
        compare_artifacts(read_model(digits.onnx_bytes), read_model(renamed), digits.samples)
    assert "'scores'" in str(refused.value) and "'probabilities'" in str(refused.value)


def test_two_files_of_the_same_format_are_refused(digits: DigitsModel) -> None:
    with pytest.raises(ConversionError, match="both files are onnx"):
        compare_artifacts(
            read_model(digits.onnx_bytes), read_model(digits.onnx_bytes), digits.samples
        )
