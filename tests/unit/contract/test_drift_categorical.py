"""Categorical and integer-coded features: a bin per category, an unseen bin, none dropped."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.drift import (
    DriftDetector,
    Reference,
    bin_index,
    psi,
    reference_statistics,
)

WINDOW = 500


def census_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """12 numeric features, two 0/1 flags and two 9-code categoricals."""
    numeric = rng.normal(0, 1, (n, 12))
    flags = (rng.random((n, 2)) < [0.3, 0.6]).astype(np.float64)
    shares = [0.3, 0.2, 0.1, 0.1, 0.1, 0.07, 0.06, 0.04, 0.03]
    codes = rng.choice(9, size=(n, 2), p=shares).astype(np.float64)
    return np.column_stack([numeric, flags, codes])


@pytest.fixture(scope="module")
def reference_rows() -> np.ndarray:
    return census_like(np.random.default_rng(0), 4000)


@pytest.fixture(scope="module")
def reference(reference_rows: np.ndarray) -> Reference:
    return Reference.from_json(reference_statistics(reference_rows, input_name="x"))


def windows_of(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rows[rng.integers(0, len(rows), count * WINDOW)]


def quantile_reference_psi(reference_rows: np.ndarray, window: np.ndarray, feature: int) -> float:
    """The score the quantile-only binning of earlier bundles gives (the issue's baseline)."""
    column = reference_rows[:, feature]
    edges = np.unique(np.quantile(column, np.linspace(0, 1, 11)))
    ref = np.bincount(bin_index(column, edges), minlength=len(edges) + 1)
    cur = np.bincount(bin_index(window[:, feature], edges), minlength=len(edges) + 1)
    return psi(ref, cur)


def test_flags_and_codes_are_categorical_and_informative(reference: Reference) -> None:
    kinds = [f.kind for f in reference.features]
    assert kinds == ["numeric"] * 12 + ["categorical"] * 4
    assert all(f.informative for f in reference.features)
    assert reference.features[12].categories.tolist() == [0.0, 1.0]
    assert len(reference.features[14].categories) == 9


def test_declared_categorical_feature_is_binned_by_category() -> None:
    rows = np.random.default_rng(1).normal(0, 1, (1000, 2)).round(1)
    stats = reference_statistics(rows, input_name="x", categorical=[1])
    assert [f["kind"] for f in stats["features"]] == ["numeric", "categorical"]
    assert len(stats["features"][1]["categories"]) == len(np.unique(rows[:, 1]))


def test_zero_one_feature_stuck_at_one_value_flags_the_window(
    reference_rows: np.ndarray, reference: Reference
) -> None:
    window = windows_of(reference_rows, 1, seed=2)
    window[:, 12] = 0.0
    assert quantile_reference_psi(reference_rows, window, 12) < 0.01  # blind before
    (report,) = DriftDetector(reference).observe(window)
    assert report.drifted
    assert 12 in report.drifted_features() and 12 in report.far_features
    assert "single_feature" in report.reasons


def test_rows_moved_between_codes_sharing_a_quantile_bin_flag_the_window(
    reference_rows: np.ndarray, reference: Reference
) -> None:
    window = windows_of(reference_rows, 1, seed=3)
    window[window[:, 14] == 2, 14] = 1  # codes of 10 % and 20 % in one quantile bin
    assert quantile_reference_psi(reference_rows, window, 14) < 0.01  # blind before
    (report,) = DriftDetector(reference).observe(window)
    assert report.drifted
    assert report.far_features == [14]
    assert report.chi2[14] > 27.9  # chi-square, 9 bins: p < 0.001


def test_vanishing_seven_percent_subpopulation_flags_every_window(
    reference_rows: np.ndarray, reference: Reference
) -> None:
    without = reference_rows[reference_rows[:, 15] != 5]  # the 7 % code
    reports = DriftDetector(reference).observe(windows_of(without, 20, seed=4))
    assert len(reports) == 20
    assert all(r.drifted and 15 in r.far_features for r in reports)


def test_new_category_filling_a_window_flags_it_alone_and_is_named(
    reference_rows: np.ndarray, reference: Reference
) -> None:
    window = windows_of(reference_rows, 1, seed=5)
    window[:, 14] = 42.0
    (report,) = DriftDetector(reference).observe(window)
    assert report.drifted and "new_category" in report.reasons
    (new,) = report.new_categories
    assert new.feature == 14 and new.values == {42.0: WINDOW} and new.flags
    data = report.to_data()
    assert data["new_categories"][0]["values"] == [[42, WINDOW]]


def test_a_stray_unseen_value_is_named_but_does_not_flag(
    reference_rows: np.ndarray, reference: Reference
) -> None:
    window = windows_of(reference_rows, 1, seed=6)
    window[0, 15] = 11.0
    (report,) = DriftDetector(reference).observe(window)
    assert not report.drifted
    (new,) = report.new_categories
    assert new.values == {11.0: 1} and not new.flags


def test_unseen_values_named_per_window_are_capped() -> None:
    rows = np.tile(np.arange(4.0), 250)[:, None]
    reference = Reference.from_json(reference_statistics(rows, input_name="x"))
    window = np.arange(100.0, 600.0)[:, None]
    (report,) = DriftDetector(reference).observe(window)
    (new,) = report.new_categories
    assert new.count == WINDOW and len(new.values) == 8


def test_zero_inflated_numeric_feature_keeps_bins_beside_its_atom() -> None:
    rng = np.random.default_rng(7)
    column = np.where(rng.random(2000) < 0.95, 0.0, rng.normal(5, 1, 2000))
    stats = reference_statistics(column[:, None], input_name="x")
    (feature,) = stats["features"]
    assert feature["kind"] == "numeric" and len(feature["proportions"]) >= 2
    assert feature["proportions"][0] == pytest.approx(np.mean(column == 0.0))


def test_only_a_constant_feature_is_uninformative() -> None:
    rows = np.column_stack([np.full(1000, 3.0), np.tile([0.0, 1.0], 500)])
    reference = Reference.from_json(reference_statistics(rows, input_name="x"))
    assert [f.informative for f in reference.features] == [False, True]
