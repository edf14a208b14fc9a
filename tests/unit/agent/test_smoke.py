"""Runtime loading and the post-install smoke test, on the real digits model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet import schema
from edgefleet.agent.errors import RuntimeLoadError, SmokeTestError
from edgefleet.agent.inference.runtime import load_runtime
from edgefleet.agent.install.smoke import run_smoke_test
from edgefleet.bundle import Manifest, unpack_bundle, write_bundle
from edgefleet.tensors import ModelSignature
from edgefleet_demo.digits import DigitsModel

SIGNATURE = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ],
}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def make_bundle(
    tmp_path: Path,
    digits: DigitsModel,
    *,
    label: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    runtime: str = "onnxruntime",
    min_agreement: float = 1.0,
) -> tuple[Manifest, Path]:
    """Write and unpack a digits bundle whose smoke test expects the given outputs."""
    import onnxruntime as ort

    x = digits.samples[:32]
    session = ort.InferenceSession(digits.onnx_bytes, providers=["CPUExecutionProvider"])
    true_label, true_probs = session.run(["label", "probabilities"], {"input": x})
    fields: dict[str, Any] = {
        "bundle_id": "digits-1",
        "model": {"name": "digits", "version": "1"},
        "release": 1,
        "profiles": ["x86-64-gateway-onnx"],
        "runtime": {"name": runtime},
        "artifact": "model.onnx",
        "signature": SIGNATURE,
        "smoke_test": {
            "inputs": {"input": "smoke_input.npy"},
            "expected": {"label": "smoke_label.npy", "probabilities": "smoke_probs.npy"},
            "atol": 1e-4,
            "rtol": 1e-3,
            "min_agreement": min_agreement,
        },
    }
    files = {
        "model.onnx": (digits.onnx_bytes, "model"),
        "smoke_input.npy": (_npy(x), "smoke_input"),
        "smoke_label.npy": (_npy(true_label if label is None else label), "smoke_output"),
        "smoke_probs.npy": (
            _npy(true_probs if probabilities is None else probabilities),
            "smoke_output",
        ),
    }
    bundle = tmp_path / "bundle.tar"
    write_bundle(bundle, fields, files)  # type: ignore[arg-type]
    slot = tmp_path / "slot"
    return unpack_bundle(bundle, slot), slot


def test_onnx_runtime_loads_bundle_and_reports_manifest_signature(
    tmp_path: Path, digits: DigitsModel
) -> None:
    manifest, slot = make_bundle(tmp_path, digits)
    runtime = load_runtime(manifest, slot)
    assert runtime.signature == schema.convert(SIGNATURE, ModelSignature)
    outputs = runtime.infer({"input": digits.holdout_x[:5]})
    assert outputs["label"].shape == (5,)
    assert outputs["probabilities"].shape == (5, 10)


def test_smoke_test_passes_when_outputs_match(tmp_path: Path, digits: DigitsModel) -> None:
    manifest, slot = make_bundle(tmp_path, digits)
    run_smoke_test(load_runtime(manifest, slot), manifest, slot)


def test_smoke_test_fails_naming_the_integer_output_that_disagrees(
    tmp_path: Path, digits: DigitsModel
) -> None:
    wrong = np.full(32, 11, dtype=np.int64)
    manifest, slot = make_bundle(tmp_path, digits, label=wrong)
    with pytest.raises(SmokeTestError, match="label") as caught:
        run_smoke_test(load_runtime(manifest, slot), manifest, slot)
    assert caught.value.output == "label"


def test_smoke_test_tolerates_label_disagreement_within_min_agreement(
    tmp_path: Path, digits: DigitsModel
) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(digits.onnx_bytes, providers=["CPUExecutionProvider"])
    (label,) = session.run(["label"], {"input": digits.samples[:32]})
    label = label.copy()
    label[0] = (label[0] + 1) % 10  # 31 of 32 agree
    manifest, slot = make_bundle(tmp_path, digits, label=label, min_agreement=0.9)
    run_smoke_test(load_runtime(manifest, slot), manifest, slot)


def test_smoke_test_fails_naming_the_float_output_outside_tolerance(
    tmp_path: Path, digits: DigitsModel
) -> None:
    manifest, slot = make_bundle(
        tmp_path, digits, probabilities=np.full((32, 10), 0.1, dtype=np.float32)
    )
    with pytest.raises(SmokeTestError, match="probabilities") as caught:
        run_smoke_test(load_runtime(manifest, slot), manifest, slot)
    assert caught.value.output == "probabilities"


def test_smoke_test_fails_on_shape_mismatch(tmp_path: Path, digits: DigitsModel) -> None:
    manifest, slot = make_bundle(tmp_path, digits, label=np.zeros(3, dtype=np.int64))
    with pytest.raises(SmokeTestError, match="shape"):
        run_smoke_test(load_runtime(manifest, slot), manifest, slot)


def test_smoke_test_refuses_pickled_npy_files(tmp_path: Path, digits: DigitsModel) -> None:
    manifest, slot = make_bundle(tmp_path, digits)
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (slot / "smoke_label.npy").write_bytes(buffer.getvalue())
    with pytest.raises(SmokeTestError, match=r"smoke_label\.npy"):
        run_smoke_test(load_runtime(manifest, slot), manifest, slot)


def test_load_runtime_refuses_unknown_runtime(tmp_path: Path, digits: DigitsModel) -> None:
    manifest, slot = make_bundle(tmp_path, digits, runtime="tensorrt")
    with pytest.raises(RuntimeLoadError, match="tensorrt"):
        load_runtime(manifest, slot)


def test_load_runtime_refuses_corrupt_model_file(tmp_path: Path, digits: DigitsModel) -> None:
    manifest, slot = make_bundle(tmp_path, digits)
    (slot / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeLoadError, match=r"model\.onnx"):
        load_runtime(manifest, slot)
