"""Drift measures agree with scipy's; the detector flags shifts and stays quiet otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from edgefleet.drift import (
    DriftDetector,
    DriftThresholds,
    Reference,
    bin_index,
    chi_square,
    js_distance,
    ks_binned,
    psi,
    wasserstein_binned,
)


def reference_for(samples: np.ndarray, bins: int = 10) -> Reference:
    features = []
    for i in range(samples.shape[1]):
        edges = np.unique(np.quantile(samples[:, i], np.linspace(0, 1, bins + 1)))
        if edges.size < 2:
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        counts, _ = np.histogram(samples[:, i], bins=edges)
        features.append(
            {"index": i, "edges": edges.tolist(), "proportions": (counts / len(samples)).tolist()}
        )
    return Reference.from_json({"input": "x", "n_samples": len(samples), "features": features})


def test_bin_index_matches_numpy_histogram_inside_the_range() -> None:
    rng = np.random.default_rng(1)
    edges = np.array([0.0, 1.0, 2.5, 4.0])
    values = np.concatenate([rng.uniform(0, 4, 1000), [0.0, 1.0, 2.5, 4.0]])
    index = bin_index(values, edges)
    inner = np.bincount(index, minlength=5)[1:-1]
    np.testing.assert_array_equal(inner, np.histogram(values, bins=edges)[0])


def test_values_outside_the_reference_range_land_in_outer_bins() -> None:
    index = bin_index(np.array([-1.0, 5.0, 4.0]), np.array([0.0, 2.0, 4.0]))
    assert index.tolist() == [0, 3, 2]


def test_psi_is_zero_for_identical_and_matches_its_formula() -> None:
    p = np.array([0.25, 0.25, 0.5])
    q = np.array([0.5, 0.25, 0.25])
    assert psi(p, p) == pytest.approx(0.0, abs=1e-9)
    expected = np.sum((q - p) * np.log(q / p))
    assert psi(p, q) == pytest.approx(expected, rel=1e-3)


def test_js_distance_matches_scipy() -> None:
    p = np.array([0.1, 0.4, 0.5])
    q = np.array([0.3, 0.3, 0.4])
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-3)


def test_binned_ks_and_wasserstein_track_scipy_on_fine_bins() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 20000)
    b = rng.normal(0.5, 1, 20000)
    edges = np.linspace(-6, 7, 400)
    ca = np.bincount(bin_index(a, edges), minlength=len(edges) + 1)
    cb = np.bincount(bin_index(b, edges), minlength=len(edges) + 1)
    from scipy.stats import ks_2samp

    assert ks_binned(ca, cb) == pytest.approx(ks_2samp(a, b).statistic, abs=0.01)
    assert wasserstein_binned(edges, ca, cb) == pytest.approx(wasserstein_distance(a, b), abs=0.02)


def test_chi_square_is_small_for_matching_counts_and_large_for_shifted() -> None:
    shares = np.array([0.5, 0.3, 0.2])
    assert chi_square(shares, np.array([500, 300, 200])) < 0.01
    assert chi_square(shares, np.array([200, 300, 500])) > 100


def test_detector_stays_quiet_on_unshifted_data_and_flags_a_shift() -> None:
    rng = np.random.default_rng(3)
    reference = reference_for(rng.normal(0, 1, (2000, 8)))
    detector = DriftDetector(reference, DriftThresholds(window=500))
    quiet = detector.observe(rng.normal(0, 1, (5000, 8)))
    assert len(quiet) == 10
    assert not any(r.drifted for r in quiet)
    shifted = rng.normal(0, 1, (500, 8))
    shifted[:, :4] += 1.0
    (report,) = detector.observe(shifted)
    assert report.drifted
    assert report.drifted_features() == [0, 1, 2, 3]
    assert report.share_drifted == pytest.approx(0.5)
    assert set(report.to_data()) >= {"psi", "js", "ks", "share_drifted", "drifted", "window"}


def test_detector_memory_does_not_grow_with_traffic() -> None:
    rng = np.random.default_rng(4)
    detector = DriftDetector(
        reference_for(rng.normal(0, 1, (1000, 4))), DriftThresholds(window=700)
    )
    sizes = [c.size for c in detector._counts]
    detector.observe(rng.normal(0, 1, (10_000, 4)))
    assert [c.size for c in detector._counts] == sizes
    assert detector.seen == 10_000 % 700


def test_constant_reference_feature_drifts_only_when_values_leave_its_bin() -> None:
    samples = np.zeros((1000, 2))
    samples[:, 1] = np.random.default_rng(5).normal(0, 1, 1000)
    detector = DriftDetector(reference_for(samples), DriftThresholds(window=200))
    (same,) = detector.observe(samples[:200])
    assert not same.drifted
    moved = samples[:200].copy()
    moved[:, 0] = 3.0
    (report,) = detector.observe(moved)
    assert report.drifted_features() == [0]


def test_reservoir_keeps_at_most_its_size_and_samples_uniformly() -> None:
    from edgefleet.agent.telemetry.drift import Reservoir

    hits = np.zeros(1000)
    for seed in range(300):
        reservoir = Reservoir(10, seed=seed)
        for start in range(0, 1000, 37):
            rows = np.arange(start, min(start + 37, 1000), dtype=np.float32)[:, None]
            reservoir.offer(rows, None)
        sample, seen = reservoir.take()
        assert seen == 1000 and len(sample) == 10
        for row, _answer in sample:
            hits[int(row[0])] += 1
        assert reservoir.take() == ([], 0)  # taking starts afresh
    # Each row is kept with probability 10/1000: early and late rows alike.
    assert abs(hits[:500].sum() - hits[500:].sum()) < 0.15 * hits.sum()
