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
