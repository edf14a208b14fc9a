"""A retraining command for the digits model, used by ``edgefleet demo --drift``.

Follows the command-hook contract in ``edgefleet.control_plane.drift.hook_runner``: reads
``EDGEFLEET_OUTPUT_DIR`` and writes ``model.onnx``, ``samples.npy`` and
``holdout.npz``. The devices in the demo see digits whose pixels are brighter by
``EDGEFLEET_DIGITS_SHIFT``; this command stands in for a team that collected such
images, so it trains on the original digits plus their shifted copies. The new
reference samples are shifted ones — what the devices now see.

When the control plane hands it field data (``EDGEFLEET_FIELD_DATA_DIR``, written by
``edgefleet.control_plane.services.field_data.write_field_data``) with labelled rows,
it trains on what the devices saw instead: the original digits plus every labelled
field row, and the new reference samples are the field rows the devices sent (all of
them, labelled or not), when there are enough of them for a reference.

    EDGEFLEET_OUTPUT_DIR=/tmp/out EDGEFLEET_DIGITS_SHIFT=4 python -m edgefleet_demo.retrain_digits
"""

from __future__ import annotations

import io
import json
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


MIN_REFERENCE_ROWS = 100
"""Fewest field rows that make the new reference; fewer keep the original samples."""
FEATURES = 64


def load_field_data(directory: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Field inputs [n, 64] and labels [n] (-1 where unknown), or None without any."""
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("rows") or manifest.get("width") != FEATURES:
        return None
    files = manifest["files"]
    x = np.load(directory / files["inputs"], allow_pickle=False).astype(np.float32)
    y = np.load(directory / files["labels"], allow_pickle=False).astype(np.int64)
    return x, y


FIELD_HOLDOUT_SHARE = 1 / 3
"""Labelled field rows kept out of training: the challenger is judged on them too."""


def train_on_field_data(field_x: np.ndarray, field_y: np.ndarray, seed: int = 0) -> DigitsModel:
    """An MLP trained on the original digits plus most of the labelled field rows.

    A third of the labelled field rows (seeded) never reach training: with the original
    holdout they are the holdout the control plane judges champion and challenger on,
    so a challenger wins by doing better on what the devices see now, not by having
    memorised it.
    """
    import warnings

    train_x, train_y, sample_x, holdout_x, holdout_y = load_split(seed)
    labelled = np.flatnonzero(field_y >= 0)
    order = np.random.default_rng(seed).permutation(labelled)
    kept_out = order[: int(len(order) * FIELD_HOLDOUT_SHARE)]
    learn = order[len(kept_out) :]
    x = np.concatenate([train_x, field_x[learn]])
    y = np.concatenate([train_y, field_y[learn]])
    classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x / PIXEL_MAX, y)
    classifier.coefs_[0] = classifier.coefs_[0] / PIXEL_MAX
    samples = field_x if len(field_x) >= MIN_REFERENCE_ROWS else sample_x
    judge_x = np.concatenate([holdout_x, field_x[kept_out]]).astype(np.float32)
    judge_y = np.concatenate([holdout_y, field_y[kept_out]])
    return DigitsModel(
        onnx_bytes=export_onnx(classifier),
        samples=samples.astype(np.float32),
        holdout_x=judge_x,
        holdout_y=judge_y,
        train_accuracy=float(classifier.score(x, y)),
        holdout_accuracy=float(classifier.score(judge_x, judge_y)),
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
    field_dir = os.environ.get("EDGEFLEET_FIELD_DATA_DIR")
    field = load_field_data(Path(field_dir)) if field_dir else None
    if field is not None and int(np.sum(field[1] >= 0)) > 0:
        model = train_on_field_data(*field)
        write_outputs(model, Path(output))
        print(
            f"retrained digits on {int(np.sum(field[1] >= 0))} labelled field rows "
            f"({len(field[0])} field rows in all, a third of the labelled ones held out): "
            f"holdout accuracy {model.holdout_accuracy:.3f}"
        )
        return 0
    shift = args.shift
    model = train_shift_aware(shift)
    write_outputs(model, Path(output))
    print(
        f"retrained digits with shift {shift}: holdout accuracy {model.holdout_accuracy:.3f} "
        f"on original + shifted digits (no labelled field data)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
