"""Size, accuracy, agreement and batch-1 latency of every candidate vs fp32, per runtime.

Two models: the digits MLP (sklearn -> ONNX) and a small CNN on the same digits, built
with onnx.helper from numpy weights (a fixed random conv feature extractor with a
least-squares classifier head, so no training framework is needed). Every candidate
the pipeline builds for each profile is measured on this machine, at batch 1, on the
digits holdout, in the profile's runtime (tflite-runtime 2.14 in its worker environment).

    .venv/bin/python bench/converter_candidates.py
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from control_plane.digits import load_split, train_digits_model
from converters.errors import ConversionError, GateError
from converters.gate import CandidateResult
from converters.pipeline import Holdout, build_for_profile
from edgefleet.profile import default_profiles_dir, load_profiles

PROFILES = [
    "x86-64-gateway-onnx",
    "jetson-orin-onnx-fp16",
    "rpi-arm64-litert-int8",
    "legacy-armv7-tflite214",
    "coral-edgetpu-int8",
]


def _conv_features(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """What the CNN's Conv(3x3, pad 1) + Relu + MaxPool(2) + Flatten computes, in numpy."""
    images = x.reshape(-1, 1, 8, 8)
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((len(x), len(kernels), 8, 8), np.float32)
    for k, kernel in enumerate(kernels):
        for i in range(3):
            for j in range(3):
                out[:, k] += kernel[0, i, j] * padded[:, 0, i : i + 8, j : j + 8]
    out = np.maximum(out, 0)
    pooled = out.reshape(len(x), len(kernels), 4, 2, 4, 2).max(axis=(3, 5))
    return pooled.reshape(len(x), -1)


def build_cnn() -> bytes:
    """A small CNN [n, 64] -> probabilities [n, 10] with weights fitted in numpy."""
    train_x, train_y, *_ = load_split(0)
    rng = np.random.default_rng(0)
    kernels = rng.normal(0, 1 / 3, size=(16, 1, 3, 3)).astype(np.float32) / 16.0
    features = _conv_features(train_x, kernels)
    onehot = np.eye(10, dtype=np.float32)[train_y] * 8.0
    design = np.hstack([features, np.ones((len(features), 1), np.float32)])
    solution = np.linalg.lstsq(
        design.T @ design + 1e-1 * np.eye(design.shape[1]), design.T @ onehot, rcond=None
    )[0]
    weight, bias = solution[:-1].astype(np.float32), solution[-1].astype(np.float32)
    init = [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape"),
        numpy_helper.from_array(kernels, "conv_w"),
        numpy_helper.from_array(np.zeros(16, np.float32), "conv_b"),
        numpy_helper.from_array(weight, "fc_w"),
        numpy_helper.from_array(bias, "fc_b"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["image"]),
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _print(
    model: str,
    profile: str,
    rows: list[CandidateResult],
    fp32: CandidateResult | None,
    note: str = "",
) -> None:
    print(f"\n{model} / {profile} {note}")
    print(
        f"{'candidate':32} {'prec':5} {'size':>8} {'xsize':>6} {'acc':>7} {'agree':>7} "
        f"{'lat ms':>8} {'xlat':>6} {'verdict':8} chosen"
    )
    for r in rows:
        xs = f"{r.size_bytes / fp32.size_bytes:.2f}" if fp32 and r.size_bytes else "-"
        xl = (
            f"{r.latency_ms / fp32.latency_ms:.2f}"
            if fp32 and r.latency_ms and fp32.latency_ms
            else "-"
        )
        acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
        agr = "-" if r.agreement is None else f"{r.agreement:.4f}"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.4f}"
        print(
            f"{r.candidate:32} {r.precision:5} {r.size_bytes:8d} {xs:>6} {acc:>7} {agr:>7} "
            f"{lat:>8} {xl:>6} {r.verdict:8} {'*' if r.chosen else ''}"
        )


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    digits = train_digits_model()
    models = {"digits-mlp": digits.onnx_bytes, "digits-cnn": build_cnn()}
    profiles = load_profiles(default_profiles_dir())
    holdout = Holdout(digits.holdout_x, digits.holdout_y)
    for model_name, data in models.items():
        for profile_name in PROFILES:
            profile = profiles[profile_name].model_copy(
                update={"precisions": sorted({*profiles[profile_name].precisions, "fp32"})}
                if not (
                    profiles[profile_name].tflite and profiles[profile_name].tflite.integer_only
                )
                else {}
            )
            try:
                outcome = build_for_profile(
                    data, profile, calibration=digits.samples, holdout=holdout
                )
            except GateError as e:
                print(f"\n{model_name} / {profile_name}: no candidate passed\n{e}")
                continue
            except ConversionError as e:
                print(f"\n{model_name} / {profile_name}: not built: {e}")
                continue
            fp32 = next((r for r in outcome.table if r.precision == "fp32"), None)
            ref = outcome.reference
            note = (
                f"(float accuracy {ref['float_accuracy']:.4f}, gate runtime "
                f"{outcome.gate_runtime['name']} {outcome.gate_runtime['version']})"
            )
            _print(model_name, profile_name, outcome.table, fp32, note)


if __name__ == "__main__":
    main()
