"""A small window gets few enough bins that each expects five of its samples."""

from __future__ import annotations

import numpy as np

from edgefleet.drift import DriftDetector, DriftThresholds, Reference, reference_statistics


def test_small_window_bins_numeric_features_so_each_bin_expects_five_samples() -> None:
    rows = np.random.default_rng(0).normal(size=(400, 1))
    for window, bins in ((4, 2), (20, 4), (500, 10)):
        stats = reference_statistics(rows, input_name="x", window=window)
        assert len(stats["features"][0]["proportions"]) == bins


# The Nile's flow at Aswan (statsmodels' nile dataset): 1871-1885, and 1899-1906 after the
# documented 1898 change point.
NILE_REFERENCE = [
    1120,
    1160,
    963,
    1210,
    1160,
    1160,
    813,
    1230,
    1370,
    1140,
    995,
    935,
    1110,
    994,
    1020,
]
NILE_AFTER_1898 = [774, 840, 874, 694, 940, 833, 701, 916]


def test_small_window_flags_the_nile_drop_after_1898() -> None:
    reference = np.asarray(NILE_REFERENCE, dtype=np.float64)[:, None]
    stats = reference_statistics(reference, input_name="x", window=4)
    detector = DriftDetector(Reference.from_json(stats), DriftThresholds(window=4))
    reports = detector.observe(np.asarray(NILE_AFTER_1898, dtype=np.float64)[:, None])
    assert any(r.drifted for r in reports)
