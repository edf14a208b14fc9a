"""Sample sets fitted to a signature: rows or whole feeds, the fixed batch honoured by
padding, older holdout files read as before, nothing cast."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgefleet import schema
from edgefleet.converters.errors import ConversionError
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.converters.samples import SampleError, Samples, load_arrays, run_rows
from edgefleet.profile import default_profiles_dir, load_profiles
from edgefleet.tensors import ModelSignature
from tests.support.signature_models import three_input_model, three_input_samples


def signature(batch: int | None = None, lead: int = -1) -> ModelSignature:
    return schema.convert(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [lead, 3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [lead, 3]}],
            "batch": batch,
        },
        ModelSignature,
    )


def test_rows_of_a_fixed_batch_model_are_fed_in_full_batches_padded_with_the_last_row() -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    samples = Samples.fit(signature(batch=4, lead=4), {"x": x}, what="samples")
    feeds = list(samples.feeds())
    assert [feed["x"].shape for feed, _real in feeds] == [(4, 3)] * 3
    assert [real for _feed, real in feeds] == [4, 4, 2]
    np.testing.assert_array_equal(feeds[-1][0]["x"][2:], np.repeat(x[-1:], 2, axis=0))
    # Outputs come back one per row: padding cut off, order kept.
    doubled = run_rows(lambda feed: {"y": feed["x"] * 2}, samples)
    np.testing.assert_array_equal(doubled["y"], x * 2)


def test_a_float64_array_for_a_float32_input_is_refused_not_cast() -> None:
    with pytest.raises(SampleError, match=r"input 'x' expects FP32\[-1, 3\], given FP64\[5, 3\]"):
        Samples.fit(signature(), {"x": np.zeros((5, 3))}, what="samples")


def test_an_older_holdout_npz_with_x_and_y_reads_as_the_one_input_and_its_labels() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 3), np.float32), y=np.arange(4))
    loaded = load_arrays(buffer.getvalue(), signature(), what="holdout")
    assert list(loaded.arrays) == ["x"] and loaded.labels is not None
    np.testing.assert_array_equal(loaded.labels, np.arange(4))


def test_an_npz_key_that_is_no_input_is_refused_naming_the_inputs() -> None:
    with pytest.raises(
        SampleError, match=r"'audio' is not an input of the model \(inputs \['x'\]\)"
    ):
        Samples.fit(signature(), {"audio": np.zeros((2, 3), np.float32)}, what="samples")


def test_a_tflite_profile_refuses_a_three_input_model_naming_its_inputs() -> None:
    profile = load_profiles(default_profiles_dir())["x86-64-ipc-litert-int8"]
    with pytest.raises(ConversionError, match="takes one FP32 input, the model has audio"):
        build_for_profile(
            three_input_model(),
            profile,
            calibration=three_input_samples(100),
            holdout=Holdout(three_input_samples(100, seed=3)),
        )


def test_the_fp16_candidate_of_a_three_input_model_with_an_int64_scalar_loads_and_passes() -> None:
    # onnxconverter-common casts the shared float input once per reader under one name
    # and leaves Cast(int64 -> float) at float: both used to make the candidate unloadable.
    profile = load_profiles(default_profiles_dir())["jetson-orin-onnx-fp16"]
    outcome = build_for_profile(
        three_input_model(),
        profile,
        calibration=three_input_samples(100),
        holdout=Holdout(three_input_samples(100, seed=3)),
        task="regression",
    )
    fp16 = next(r for r in outcome.table if r.candidate == "fp16")
    assert fp16.verdict == "passed", fp16.reasons
    assert fp16.relative_error is not None and fp16.relative_error < 0.01
