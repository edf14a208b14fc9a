"""A small real model for the demo and the tests: an MLP on scikit-learn's digits.

The digits set ships inside scikit-learn, so nothing is downloaded. The split keeps
three disjoint parts: training, representative samples (smoke tests, reference
statistics, later calibration) and a holdout that only evaluation sees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

INPUT_NAME = "input"
N_FEATURES = 64


@dataclass(frozen=True)
class DigitsModel:
    onnx_bytes: bytes
    samples: np.ndarray  # float32 [n, 64], representative inputs shipped with the model
    holdout_x: np.ndarray  # float32 [n, 64]
    holdout_y: np.ndarray  # int64 [n]
    train_accuracy: float
    holdout_accuracy: float


def load_split(seed: int = 0) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, sample_x, holdout_x, holdout_y) as float32 / int64."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    train_x, rest_x, train_y, rest_y = train_test_split(
        x, y, test_size=0.4, random_state=seed, stratify=y
    )
    sample_x, holdout_x, _sample_y, holdout_y = train_test_split(
        rest_x, rest_y, test_size=0.5, random_state=seed, stratify=rest_y
    )
    return train_x, train_y, sample_x, holdout_x, holdout_y


def export_onnx(classifier: MLPClassifier) -> bytes:
    """ONNX bytes with one float input ``input`` [-1, 64] and outputs label, probabilities."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(
        classifier,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(onnx_model.SerializeToString())


def train_digits_model(
    seed: int = 0, hidden: tuple[int, ...] = (64,), max_iter: int = 300
) -> DigitsModel:
    """Train the MLP, export it to ONNX, and return it with its data split."""
    train_x, train_y, sample_x, holdout_x, holdout_y = load_split(seed)
    classifier = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # The optimiser stops at max_iter before its loss settles; accuracy on the holdout is
        # what is judged (and the demo checks it), so the warning only adds noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(train_x / 16.0, train_y)
    # Fold the /16 scaling into the exported graph's first layer so devices get raw pixels.
    classifier.coefs_[0] = classifier.coefs_[0] / 16.0
    return DigitsModel(
        onnx_bytes=export_onnx(classifier),
        samples=sample_x,
        holdout_x=holdout_x,
        holdout_y=holdout_y,
        train_accuracy=float(classifier.score(train_x, train_y)),
        holdout_accuracy=float(classifier.score(holdout_x, holdout_y)),
    )


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


def build_digits_cnn() -> bytes:
    """A small CNN [n, 64] -> probabilities [n, 10], built without a training framework.

    A fixed random 3x3 conv feature extractor (16 channels, Relu, 2x2 max pool) and a
    least-squares classifier head fitted in numpy: a real convolutional model for the
    converters' benchmark and tests, nothing downloaded.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
