"""Small ONNX models built from code for the signature, sample and gate tests: a binary
detector whose int8 candidates flip decisions, a model with three inputs of different
dtypes, an int32-input model and one exported with a fixed batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass(frozen=True)
class BinaryDetector:
    """A logistic detector: one sigmoid score per row, scores crowded around 0.5."""

    onnx_bytes: bytes
    samples: np.ndarray  # float32 [n, 20]
    holdout_x: np.ndarray
    holdout_y: np.ndarray  # int64 [n], the float model's decisions


def binary_detector(seed: int = 0) -> BinaryDetector:
    """One large weight on a near-silent feature sets the int8 weight scale, so the small
    weights that decide every row round to a few levels: int8 flips many decisions while
    argmax over the one score column never changes."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(-0.05, 0.05, size=(20, 1)).astype(np.float32)
    weights[0, 0] = 10.0

    def rows(n: int) -> np.ndarray:
        x = rng.uniform(-1.0, 1.0, size=(n, 20)).astype(np.float32)
        x[:, 0] *= 0.001
        return x

    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 20])
    y = helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["speech"]),
        ],
        "detector",
        [x],
        [y],
        [numpy_helper.from_array(weights, "w")],
    )
    holdout_x = rows(600)
    logits = holdout_x.astype(np.float64) @ weights.astype(np.float64)
    return BinaryDetector(
        onnx_bytes=_model(graph),
        samples=rows(300),
        holdout_x=holdout_x,
        holdout_y=(logits[:, 0] >= 0).astype(np.int64),
    )


def three_input_model() -> bytes:
    """``audio`` FP32 [batch, 16], ``state`` FP32 [batch, 8], ``sr`` INT64 scalar ->
    ``score`` FP32 [batch, 4] and ``state_out`` FP32 [batch, 8] (a VAD's shape)."""
    rng = np.random.default_rng(1)
    w_audio = rng.normal(0, 0.3, size=(16, 4)).astype(np.float32)
    w_state = rng.normal(0, 0.3, size=(8, 4)).astype(np.float32)
    inputs = [
        helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 16]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 8]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4]),
        helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", 8]),
    ]
    nodes = [
        helper.make_node("MatMul", ["audio", "w_audio"], ["a"]),
        helper.make_node("MatMul", ["state", "w_state"], ["s"]),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sr_f", "per_hz"], ["sr_scaled"]),
        helper.make_node("Add", ["a", "s"], ["as"]),
        helper.make_node("Add", ["as", "sr_scaled"], ["score"]),
        helper.make_node("Tanh", ["state"], ["t"]),
        helper.make_node("Mul", ["t", "half"], ["state_out"]),
    ]
    initializers = [
        numpy_helper.from_array(w_audio, "w_audio"),
        numpy_helper.from_array(w_state, "w_state"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "per_hz"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    return _model(helper.make_graph(nodes, "vad", inputs, outputs, initializers))


def three_input_samples(n: int, seed: int = 2) -> dict[str, np.ndarray]:
    """Rows for ``three_input_model``: ``sr`` as whole feeds, one scalar per row."""
    rng = np.random.default_rng(seed)
    return {
        "audio": rng.normal(0, 1, size=(n, 16)).astype(np.float32),
        "state": rng.normal(0, 1, size=(n, 8)).astype(np.float32),
        "sr": rng.choice(np.array([8000, 16000], np.int64), size=n),
    }


def int32_model() -> bytes:
    """``tokens`` INT32 [batch, 8] -> ``logits`` FP32 [batch, 3]."""
    rng = np.random.default_rng(3)
    weights = rng.normal(0, 0.5, size=(8, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("Cast", ["tokens"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f", "w"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "ints", [x], [y], [numpy_helper.from_array(weights, "w")])
    return _model(graph)


def fixed_batch_model(batch: int = 4, *, extra_input: tuple[int, ...] | None = None) -> bytes:
    """``x`` FP32 [batch, 10] with the batch fixed at export -> ``y`` FP32 [batch, 3];
    ``extra_input`` adds an input ``s`` of that fixed shape, passed through as ``s_out``."""
    rng = np.random.default_rng(4)
    weights = rng.normal(0, 0.5, size=(10, 3)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 10])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    if extra_input is not None:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, list(extra_input)))
        outputs.append(helper.make_tensor_value_info("s_out", TensorProto.FLOAT, list(extra_input)))
        nodes.append(helper.make_node("Identity", ["s"], ["s_out"]))
    graph = helper.make_graph(
        nodes, "fixed", inputs, outputs, [numpy_helper.from_array(weights, "w")]
    )
    return _model(graph)
