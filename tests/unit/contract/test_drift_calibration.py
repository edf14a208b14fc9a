"""Calibrated thresholds hold their stated false-alarm rate; old references still load."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.drift import (
    DEFAULT_PSI_THRESHOLD,
    DriftDetector,
    DriftThresholds,
    Reference,
    psi,
    reference_statistics,
)

WINDOW = 100
RATE = 0.05
WINDOWS = 2000


def mixed_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack(
        [
            rng.normal(0, 1, (n, 4)),
            rng.exponential(1, n),
            (rng.random(n) < 0.2).astype(np.float64),
            rng.choice(6, size=n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05]).astype(np.float64),
        ]
    )


@pytest.fixture(scope="module")
def reference_rows() -> np.ndarray:
    return mixed_rows(np.random.default_rng(10), 4000)


def test_window_rule_false_alarm_rate_is_the_stated_rate_on_resampled_windows(
    reference_rows: np.ndarray,
) -> None:
    stats = reference_statistics(
        reference_rows, input_name="x", window=WINDOW, false_alarm_rate=RATE
    )
    level = stats["calibration"]["feature_level"]
    assert RATE / len(stats["features"]) <= level <= RATE
    reference = Reference.from_json(stats)
    # No floor: the calibrated thresholds alone decide.
    detector = DriftDetector(reference, DriftThresholds(window=WINDOW, psi=0.0))
    rng = np.random.default_rng(11)
    rows = reference_rows[rng.integers(0, len(reference_rows), WINDOWS * WINDOW)]
    reports = detector.observe(rows)
    assert len(reports) == WINDOWS
    over = np.array([np.array(r.psi) > np.array(r.feature_thresholds) for r in reports])
    # Each feature crosses its threshold at about the per-feature level: resampled
    # windows are a little quieter than fresh ones (no reference noise), and the
    # estimate over 2,000 windows has a standard error of sqrt(level / 2000).
    assert np.all(over.mean(axis=0) <= level * 1.5 + 0.005), over.mean(axis=0)
    assert np.all(over.mean(axis=0) >= level / 4), over.mean(axis=0)
    # The window rule as a whole: at most the stated rate, give or take the estimate.
    window_rate = np.mean([r.drifted for r in reports])
    assert RATE / 5 <= window_rate <= RATE * 1.25, window_rate


def test_windows_from_the_reference_population_rarely_flag_at_the_defaults(
    reference_rows: np.ndarray,
) -> None:
    reference = Reference.from_json(reference_statistics(reference_rows, input_name="x"))
    fresh = mixed_rows(np.random.default_rng(12), 500 * 400)
    reports = DriftDetector(reference).observe(fresh)
    assert np.mean([r.drifted for r in reports]) <= 0.01


def test_calibrated_threshold_never_falls_below_the_floor(reference_rows: np.ndarray) -> None:
    reference = Reference.from_json(reference_statistics(reference_rows, input_name="x"))
    detector = DriftDetector(reference)
    assert all(t >= DEFAULT_PSI_THRESHOLD for t in detector.feature_thresholds)


def test_small_windows_get_higher_thresholds(reference_rows: np.ndarray) -> None:
    small = reference_statistics(reference_rows, input_name="x", window=50)
    large = reference_statistics(reference_rows, input_name="x", window=1000)
    for a, b in zip(small["features"], large["features"], strict=True):
        assert a["psi_threshold"] > b["psi_threshold"]


def test_a_device_window_smaller_than_calibrated_scales_thresholds_up(
    reference_rows: np.ndarray,
) -> None:
    reference = Reference.from_json(
        reference_statistics(reference_rows, input_name="x", window=200)
    )
    half = DriftDetector(reference, DriftThresholds(window=100, psi=0.0))
    same = DriftDetector(reference, DriftThresholds(window=200, psi=0.0))
    assert half.feature_thresholds == pytest.approx([2 * t for t in same.feature_thresholds])


def test_calibration_is_deterministic(reference_rows: np.ndarray) -> None:
    a = reference_statistics(reference_rows, input_name="x")
    b = reference_statistics(reference_rows, input_name="x")
    assert a == b


def test_empty_bins_are_floored_alike_on_both_sides() -> None:
    shares = np.array([0.5, 0.5, 0.0])
    counts = np.array([250, 250, 0])
    assert psi(shares, counts) == pytest.approx(0.0, abs=1e-12)
    assert psi(counts, shares) == pytest.approx(0.0, abs=1e-12)
    # The same move scores the same whether counts or shares are given.
    assert psi(shares, np.array([0, 250, 250])) == pytest.approx(
        psi(shares, np.array([0.0, 0.5, 0.5]))
    )


OLD_STATS = {
    "schema_version": 1,
    "input": "x",
    "n_samples": 4,
    "features": [
        {"index": 0, "edges": [0.0, 1.0, 2.0], "proportions": [0.5, 0.5]},
        {"index": 1, "edges": [4.5, 5.5], "proportions": [1.0]},
    ],
}


def test_reference_stats_of_bundles_already_on_devices_still_load_and_score() -> None:
    reference = Reference.from_json(OLD_STATS)
    assert [f.kind for f in reference.features] == ["numeric", "numeric"]
    assert reference.calibrated_window is None and reference.outputs is None
    detector = DriftDetector(reference, DriftThresholds(window=4))
    assert detector.feature_thresholds == [DEFAULT_PSI_THRESHOLD] * 2
    (report,) = detector.observe(np.array([[0.5, 5.0], [1.5, 5.0], [0.2, 5.0], [1.2, 5.0]]))
    assert not report.drifted
    (report,) = detector.observe(np.array([[0.5, 9.0]] * 4))
    assert report.drifted


def test_categorical_entries_stay_readable_as_numeric_bins() -> None:
    """An agent that predates categories reads edges with one category per bin."""
    rows = np.tile([1.0, 2.0, 5.0, 5.0], 100)[:, None]
    (entry,) = reference_statistics(rows, input_name="x")["features"]
    assert entry["kind"] == "categorical"
    old_view = {k: entry[k] for k in ("index", "edges", "proportions")}
    (feature,) = Reference.from_json({"features": [old_view]}).features
    counts = np.histogram([1.0, 2.0, 5.0], bins=feature.edges)[0]
    assert counts.tolist() == [1, 1, 1]
    assert feature.proportions[1:-1].tolist() == entry["proportions"]


def test_unsorted_categories_in_a_hand_written_reference_are_sorted() -> None:
    entry = {"index": 0, "categories": [2.0, 0.0], "proportions": [0.25, 0.75]}
    (feature,) = Reference.from_json({"features": [entry]}).features
    assert feature.categories is not None
    assert feature.categories.tolist() == [0.0, 2.0]
    assert feature.proportions.tolist() == [0.75, 0.25, 0.0]
    assert feature.bins(np.array([2.0, 0.0, 1.0])).tolist() == [1, 0, 2]


def test_outputs_of_an_unknown_kind_turn_output_drift_off_not_input_drift() -> None:
    stats = {**OLD_STATS, "outputs": {"index": 0, "kind": "tokens", "edges": [0, 1]}}
    reference = Reference.from_json(stats)
    assert reference.outputs is None and len(reference.features) == 2
