"""A retraining command for the digits model, used by ``edgefleet demo --drift``.

Follows the command-hook contract in ``edgefleet.control_plane.drift.hook_runner``: reads
``EDGEFLEET_OUTPUT_DIR`` and writes ``model.onnx``, ``samples.npy`` and
``holdout.npz``. The devices in the demo see digits whose pixels are brighter by
``EDGEFLEET_DIGITS_SHIFT``; this command stands in for a team that collected such
images, so it trains on the original digits plus their shifted copies. The new
reference samples are shifted ones — what the devices now see.

    EDGEFLEET_OUTPUT_DIR=/tmp/out EDGEFLEET_DIGITS_SHIFT=4 python -m edgefleet_demo.retrain_digits
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from edgefleet_demo.digits import DigitsModel, export_onnx, load_split

PIXEL_MAX = 16.0


def shift_digits(x: np.ndarray, shift: float) -> np.ndarray:
    """Digits as a brighter sensor sees them: every pixel up by ``shift``, clipped."""
    return np.clip(x + shift, 0.0, PIXEL_MAX).astype(np.float32)


def train_shift_aware(shift: float, seed: int = 0) -> DigitsModel:
    """An MLP trained on the original digits and their shifted copies.

    The new representative samples (the drift reference) are shifted digits; the
    holdout holds both, so the comparison judges the model on old and new inputs.
    """
    import warnings

    train_x, train_y, sample_x, holdout_x, holdout_y = load_split(seed)
    x = np.concatenate([train_x, shift_digits(train_x, shift)])
    y = np.concatenate([train_y, train_y])
    classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x / PIXEL_MAX, y)
    classifier.coefs_[0] = classifier.coefs_[0] / PIXEL_MAX
    both_x = np.concatenate([holdout_x, shift_digits(holdout_x, shift)])
    both_y = np.concatenate([holdout_y, holdout_y])
    return DigitsModel(
        onnx_bytes=export_onnx(classifier),
        samples=shift_digits(sample_x, shift),
        holdout_x=both_x,
        holdout_y=both_y,
        train_accuracy=float(classifier.score(x, y)),
        holdout_accuracy=float(classifier.score(both_x, both_y)),
    )


def write_outputs(model: DigitsModel, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "model.onnx").write_bytes(model.onnx_bytes)
    buffer = io.BytesIO()
    np.save(buffer, model.samples, allow_pickle=False)
    (output_dir / "samples.npy").write_bytes(buffer.getvalue())
    np.savez(output_dir / "holdout.npz", x=model.holdout_x, y=model.holdout_y)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="retrain the digits model on shifted digits")
    parser.add_argument(
        "--shift", type=float, default=float(os.environ.get("EDGEFLEET_DIGITS_SHIFT", "4"))
    )
    args = parser.parse_args(argv)
    output = os.environ.get("EDGEFLEET_OUTPUT_DIR")
    if not output:
        print("EDGEFLEET_OUTPUT_DIR is not set", file=sys.stderr)
        return 2
    shift = args.shift
    model = train_shift_aware(shift)
    write_outputs(model, Path(output))
    print(
        f"retrained digits with shift {shift}: holdout accuracy {model.holdout_accuracy:.3f} "
        f"on original + shifted digits"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
