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
from edgefleet.converters.samples import Samples, feed_size

logger = logging.getLogger(__name__)

MIN_SAMPLES = 100
MAX_SAMPLES = 500
BATCH = 16


def prepare_calibration(samples: Samples) -> Samples:
    """At most ``MAX_SAMPLES`` rows; refuses non-finite float inputs. Never casts."""
    for name, array in samples.float_arrays().items():
        if not np.all(np.isfinite(array)):
            raise CalibrationError(f"calibration input {name!r} has NaN or infinite values")
    if samples.n < MIN_SAMPLES:
        logger.warning("few calibration samples n=%d recommended_min=%d", samples.n, MIN_SAMPLES)
    return samples.head(MAX_SAMPLES)


def calibration_hash(samples: Samples | np.ndarray) -> str:
    """A hash naming the samples (every input's name, dtype, shape and bytes)."""
    if isinstance(samples, Samples):
        return samples.sha256()
    return hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()


class ArrayReader(CalibrationDataReader):
    """Feeds ``samples`` to onnxruntime's calibrators, every input, in small batches."""

    def __init__(self, samples: Samples, batch: int = BATCH) -> None:
        self._samples = samples
        self._batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        # Only full batches: onnxruntime's histogram calibrators (Entropy, Percentile)
        # fail on a short last batch, and dropping < BATCH rows changes no range. A
        # fixed batch or whole feeds set the batch (``Samples.feeds``).
        feeds = list(self._samples.feeds(self._batch))
        full = [feed for feed, real in feeds if real == feed_size(feed, self._samples)]
        yield from full or [feed for feed, _real in feeds]

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
