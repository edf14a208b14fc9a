"""Calibration samples: checked, bounded, hashed, and fed to the quantizers.

Calibration uses the representative samples registered with the model, never the
holdout the gate judges on. The hash names the range cache, so a rebuild with the
same model and samples reuses the ranges instead of re-running calibration.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgefleet.converters.errors import CalibrationError

logger = logging.getLogger(__name__)

MIN_SAMPLES = 100
MAX_SAMPLES = 500
BATCH = 16


def prepare_calibration(samples: np.ndarray) -> np.ndarray:
    """At most ``MAX_SAMPLES`` float32 rows; refuses non-finite or empty sets."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim < 2 or samples.shape[0] == 0:
        raise CalibrationError(f"calibration set must be [n, ...], got {list(samples.shape)}")
    if not np.all(np.isfinite(samples)):
        raise CalibrationError("calibration set has NaN or infinite values")
    if samples.shape[0] < MIN_SAMPLES:
        logger.warning(
            "few calibration samples n=%d recommended_min=%d", samples.shape[0], MIN_SAMPLES
        )
    return samples[:MAX_SAMPLES]


def calibration_hash(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()


class ArrayReader(CalibrationDataReader):
    """Feeds ``samples`` to onnxruntime's calibrators in small batches."""

    def __init__(self, input_name: str, samples: np.ndarray, batch: int = BATCH) -> None:
        self._input_name = input_name
        self._samples = samples
        self._batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        # Only full batches: onnxruntime's histogram calibrators (Entropy, Percentile)
        # fail on a short last batch, and dropping < BATCH rows changes no range.
        usable = len(self._samples) // self._batch * self._batch or len(self._samples)
        for start in range(0, usable, self._batch):
            yield {self._input_name: self._samples[start : start + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


def range_cache_path(
    cache_dir: Path | None, *, model_sha256: str, calib_sha256: str, recipe: str
) -> Path | None:
    """Where ranges for (model, samples, recipe) are cached; ``None`` without a cache dir."""
    if cache_dir is None:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{model_sha256}:{calib_sha256}:{recipe}".encode()).hexdigest()[:32]
    return cache_dir / f"ranges-{key}.json"
