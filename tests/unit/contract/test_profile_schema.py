"""The extended profile schema: cross-field rules are refused naming the field."""

from __future__ import annotations

import pytest

from edgefleet.errors import ProfileError
from edgefleet.profile import default_profiles_dir, load_profiles, parse_profile

DIR = default_profiles_dir()
ONNX = (DIR / "x86-64-gateway-onnx.toml").read_text()
TFLITE = (DIR / "rpi-arm64-litert-int8.toml").read_text()
CORAL = (DIR / "coral-edgetpu-int8.toml").read_text()


def test_the_five_device_classes_ship_and_validate() -> None:
    profiles = load_profiles(DIR)
    runtimes = {p.runtime.name for p in profiles.values()}
    assert {"onnxruntime", "ai-edge-litert", "tflite-runtime"} <= runtimes
    assert len(profiles) >= 5
    assert any(p.tflite and p.tflite.integer_only for p in profiles.values())
    assert any("fp16" in p.precisions and p.is_onnx for p in profiles.values())


def test_runtime_version_must_be_a_pep440_specifier() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(ONNX.replace('version = ">=1.17,<2"', 'version = "one point seventeen"'))
    assert caught.value.field == "runtime.version"


def test_tflite_runtime_without_an_op_set_is_refused() -> None:
    text = TFLITE.split("[tflite]")[0]
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    assert caught.value.field == "tflite"


def test_integer_only_device_refuses_float_precisions() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(CORAL.replace('precisions = ["int8"]', 'precisions = ["int8", "fp32"]'))
    assert caught.value.field == "precisions"


def test_onnx_runtime_refuses_tflite_format() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(ONNX.replace('formats = ["onnx"]', 'formats = ["tflite"]'))
    assert caught.value.field == "formats"


def test_opset_range_must_be_ordered() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(ONNX.replace("opset_min = 7", "opset_min = 30"))
    assert caught.value.field == "onnx.opset_max"


def test_unknown_tensor_dtype_is_refused_naming_it() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(ONNX.replace('input_dtypes = ["float32"]', 'input_dtypes = ["float8"]'))
    assert caught.value.field == "tensors.input_dtypes.0"
