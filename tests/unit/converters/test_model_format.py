"""A model's format is read from its bytes; a .tflite's signature is read as LiteRT sees it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from edgefleet.converters.errors import ConversionError
from edgefleet.converters.model_format import detect_format, inspect_model, read_model
from edgefleet.converters.onnx_inspect import inspect_onnx
from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet.converters.tflite_inspect import TfliteInspection, inspect_tflite
from edgefleet.tensors import TensorSpec
from edgefleet_demo.digits import DigitsModel


@pytest.fixture(scope="module")
def digits_tflite(digits: DigitsModel) -> bytes:
    return onnx_to_float_tflite(digits.onnx_bytes)[0]


def test_tflite_bytes_are_recognised_whatever_the_file_is_called(
    digits_tflite: bytes, tmp_path: Path
) -> None:
    misnamed = tmp_path / "model.onnx"
    misnamed.write_bytes(digits_tflite)
    assert detect_format(misnamed.read_bytes()) == "tflite"
    assert read_model(misnamed.read_bytes()).format == "tflite"


def test_onnx_bytes_are_recognised_as_onnx(digits: DigitsModel, tmp_path: Path) -> None:
    misnamed = tmp_path / "model.tflite"
    misnamed.write_bytes(digits.onnx_bytes)
    assert detect_format(misnamed.read_bytes()) == "onnx"


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 2), np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "described"),
    [
        (os.urandom(4096), "unknown binary data"),
        (b"", "an empty file"),
        (_npy(), "a NumPy .npy array"),
        (b"PK\x03\x04" + bytes(64), "a ZIP archive"),
        (b'{"model": "not really"}', "JSON or other text"),
    ],
)
def test_bytes_that_are_neither_format_are_refused_saying_what_they_look_like(
    data: bytes, described: str
) -> None:
    with pytest.raises(ConversionError, match="not an ONNX or TFLite model") as refused:
        detect_format(data)
    assert described in str(refused.value)
    assert "TFL3" in str(refused.value)


def test_a_tflite_header_on_a_corrupt_body_is_refused_by_the_interpreter(
    digits_tflite: bytes,
) -> None:
    corrupt = digits_tflite[:8] + bytes(len(digits_tflite) - 8)
    assert detect_format(corrupt) == "tflite"
    with pytest.raises(ConversionError, match="not a loadable TFLite model"):
        inspect_model(corrupt)


def test_tflite_signature_matches_the_onnx_model_it_was_lowered_from(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    tflite = inspect_tflite(digits_tflite)
    onnx_signature = inspect_onnx(digits.onnx_bytes).signature
    assert tflite.signature == onnx_signature  # names, dtypes, and the symbolic batch dim
    assert tflite.signature.inputs[0].shape == [-1, 64]
    assert tflite.op_histogram == {"FULLY_CONNECTED": 2, "SOFTMAX": 1, "ARG_MAX": 1}
    assert tflite.quantization == {}
    assert tflite.signature_keys == ["serving_default"]


def test_tflite_inspection_records_the_integer_boundary_of_a_quantized_model(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    from edgefleet.converters.tflite_candidates import tflite_candidates
    from edgefleet.profile import default_profiles_dir, load_profiles

    coral = load_profiles(default_profiles_dir())["coral-edgetpu-int8"]
    (static,) = [
        c
        for c in tflite_candidates(
            digits_tflite,
            coral,
            input_name="input",
            output_names=["label", "probabilities"],
            calibration=digits.samples[:64],
        )
        if not isinstance(c, ConversionError) and c.name == "tflite-int8-static-a8w8"
    ]
    inspection = inspect_model(static.data)
    assert isinstance(inspection, TfliteInspection)
    assert inspection.signature.inputs[0].datatype == "INT8"
    assert inspection.quantization["input"] == static.io_quantization["input"]
    assert inspection.signature.outputs == [  # integer-only: the scores stay int8
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="INT8", shape=[-1, 10]),
    ]


def test_damaged_tflite_files_are_refused_as_conversion_errors_never_anything_else(
    digits_tflite: bytes,
) -> None:
    # Truncations and byte flips: the interpreter, the op reader and the signature reader
    # each met some of these with their own exception types before (struct.error,
    # UnicodeDecodeError), which the API would have turned into a 500.
    rng = np.random.default_rng(14)
    refused = 0
    for _ in range(200):
        damaged = bytearray(digits_tflite)
        if rng.random() < 0.5:
            damaged = damaged[: int(rng.integers(8, len(damaged)))]
        else:
            for at in rng.integers(8, len(damaged), size=int(rng.integers(1, 20))):
                damaged[at] = int(rng.integers(0, 256))
        try:
            read_model(bytes(damaged))
        except ConversionError:
            refused += 1
    assert refused > 50  # most damage is noticed; the rest is a model that still loads
