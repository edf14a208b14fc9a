"""Drift measures and a bounded-memory drift detector, shared by device and cloud.

The reference is what the bundle ships in ``reference_stats.json``: per input
feature, bin edges at quantiles of the representative samples and the share of
samples in each bin. A device keeps only a count per bin per feature for the
current window (memory O(features x bins), independent of traffic), and when the
window is full compares it with the reference.

Measures, on the binned distributions (reference p, window q, both including an
underflow and an overflow bin so values outside the reference range count):

- PSI, the Population Stability Index: sum (q - p) ln(q / p), with both smoothed
  by ``EPSILON``. The primary score.
- Jensen-Shannon distance (base 2, in [0, 1]): symmetric and bounded, reported
  beside PSI.
- Kolmogorov-Smirnov statistic on the binned CDFs: the largest CDF gap.
- Wasserstein-1 distance on the binned CDFs, in the feature's own units.
- For categorical features, a chi-square statistic of the window counts against
  the reference proportions.

Defaults, and why:

- 10 quantile bins (the reference builder's choice): equal-mass bins make PSI as
  sensitive in the tails as in the middle, and 10 is the industry convention the
  PSI thresholds below were calibrated on.
- window 500 samples: with 10 equal-mass bins, 50 expected per bin keeps the
  sampling noise of PSI around 0.02, an order of magnitude below the threshold,
  so an unshifted stream almost never alarms (bench/drift_detection.py measures
  the false-alarm rate).
- a feature drifts when PSI > 0.2 (the usual "significant shift" line lies at
  0.2-0.25; 0.1 is "watch").
- a window drifts when at least 20 % of the informative features drift (features
  constant in the reference carry no signal unless values leave their bin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPSILON = 1e-4
DEFAULT_WINDOW = 500
DEFAULT_PSI_THRESHOLD = 0.2
DEFAULT_SHARE_THRESHOLD = 0.2


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value with 0 = below the first edge and len(edges) = above the last.

    Inside the range this matches ``np.histogram``: bins are half-open [a, b)
    except the last, which includes its right edge.
    """
    index = np.searchsorted(edges, values, side="right")
    index[values == edges[-1]] = len(edges) - 1
    return index


def with_outer_bins(proportions: Sequence[float]) -> np.ndarray:
    """Reference proportions padded with empty underflow and overflow bins."""
    return np.concatenate([[0.0], np.asarray(proportions, dtype=np.float64), [0.0]])


def _smooth(p: np.ndarray) -> np.ndarray:
    p = p + EPSILON
    return np.asarray(p / p.sum())


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population Stability Index between two binned distributions.

    Args:
        reference: Counts or shares per bin (the reference, p).
        current: Counts or shares over the same bins (the window, q).

    Returns:
        PSI, 0 for identical distributions; both are smoothed by ``EPSILON``, so an
        empty bin on either side gives a finite score, not infinity.
    """
    p = _smooth(np.asarray(reference, dtype=np.float64))
    q = _smooth(np.asarray(current, dtype=np.float64))
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) between two binned distributions."""
    p = _smooth(np.asarray(reference, dtype=np.float64))
    q = _smooth(np.asarray(current, dtype=np.float64))
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(divergence, 0.0)))


def ks_binned(reference: np.ndarray, current: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic of two binned distributions (largest CDF gap)."""
    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(current, dtype=np.float64)
    return float(np.max(np.abs(np.cumsum(p / p.sum()) - np.cumsum(q / max(q.sum(), 1e-12)))))


def wasserstein_binned(edges: np.ndarray, reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance between the inner bins' distributions, in feature units.

    Args:
        edges: The reference's bin edges (one more than the inner bins).
        reference: Counts or shares per bin, underflow and overflow bins included
            (they are left out of this measure: their width is unknown).
        current: Counts or shares over the same bins.

    Returns:
        The distance, 0 when either side has nothing in the inner bins.
    """
    widths = np.diff(edges)
    p = np.asarray(reference, dtype=np.float64)[1:-1]
    q = np.asarray(current, dtype=np.float64)[1:-1]
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    gap = np.abs(np.cumsum(p / p.sum()) - np.cumsum(q / q.sum()))
    return float(np.sum(gap * widths))


def chi_square(reference_proportions: np.ndarray, counts: np.ndarray) -> float:
    """Pearson chi-square statistic of category ``counts`` against reference shares."""
    expected = _smooth(np.asarray(reference_proportions, dtype=np.float64)) * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


@dataclass(frozen=True)
class FeatureReference:
    """One input feature's reference: its bin edges and the share of samples in each bin."""

    index: int
    edges: np.ndarray
    proportions: np.ndarray  # with underflow and overflow bins

    @property
    def informative(self) -> bool:
        """False for a feature constant in the reference (one inner bin)."""
        return len(self.edges) > 2


@dataclass(frozen=True)
class Reference:
    """Parsed ``reference_stats.json``."""

    input_name: str
    n_samples: int
    features: list[FeatureReference]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """Parse a bundle's ``reference_stats.json``, as decoded.

        Raises:
            KeyError: A required key (``features``, or a feature's ``index``, ``edges`` or
                ``proportions``) is missing.
            ValueError, TypeError: A value is not a number or a list of numbers.
        """
        features = [
            FeatureReference(
                index=int(f["index"]),
                edges=np.asarray(f["edges"], dtype=np.float64),
                proportions=with_outer_bins(f["proportions"]),
            )
            for f in data["features"]
        ]
        return cls(str(data.get("input", "")), int(data.get("n_samples", 0)), features)


@dataclass(frozen=True)
class DriftThresholds:
    """When a window is scored, and when it counts as drifted (see the module docstring).

    ``window``: samples per window; ``psi``: a feature drifts above this score;
    ``share``: a window drifts when at least this share of informative features do.
    """

    window: int = DEFAULT_WINDOW
    psi: float = DEFAULT_PSI_THRESHOLD
    share: float = DEFAULT_SHARE_THRESHOLD


@dataclass
class DriftReport:
    """Scores of one full window; ``to_data`` is the telemetry ``drift`` payload."""

    window: int
    psi: list[float]
    js: list[float]
    ks: list[float]
    share_drifted: float
    drifted: bool
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def drifted_features(self) -> list[int]:
        return [i for i, score in enumerate(self.psi) if score > self.thresholds.psi]

    def to_data(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "share_drifted": round(self.share_drifted, 4),
            "drifted": self.drifted,
            "drifted_features": self.drifted_features(),
            "psi": [round(s, 4) for s in self.psi],
            "js": [round(s, 4) for s in self.js],
            "ks": [round(s, 4) for s in self.ks],
            "psi_threshold": self.thresholds.psi,
            "share_threshold": self.thresholds.share,
        }


class DriftDetector:
    """Counts inputs per reference bin and scores each full window against the reference.

    Memory is one integer per bin per feature whatever the traffic; ``observe`` is
    vectorised over a batch. Not thread-safe: the caller serialises.
    """

    def __init__(self, reference: Reference, thresholds: DriftThresholds | None = None) -> None:
        """Start with an empty window.

        Args:
            reference: The bundle's reference distributions.
            thresholds: Window size and drift thresholds; the defaults when None.
        """
        self.reference = reference
        self.thresholds = thresholds or DriftThresholds()
        self._counts = [np.zeros(len(f.proportions), dtype=np.int64) for f in reference.features]
        self._seen = 0

    @property
    def seen(self) -> int:
        """Samples in the current (not yet full) window."""
        return self._seen

    def observe(self, batch: np.ndarray) -> list[DriftReport]:
        """Count a batch of inputs, scoring every window it completes.

        A batch may complete several windows, or none; the counts of a window that is not
        yet full carry over to the next call.

        Args:
            batch: Inputs as [n, features] (or anything that reshapes to it row by row).

        Returns:
            One report per window completed, oldest first; empty when none was.
        """
        batch = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        reports = []
        start = 0
        while start < len(batch):
            take = min(self.thresholds.window - self._seen, len(batch) - start)
            chunk = batch[start : start + take]
            for feature, counts in zip(self.reference.features, self._counts, strict=True):
                index = bin_index(chunk[:, feature.index], feature.edges)
                counts += np.bincount(index, minlength=len(counts))
            self._seen += take
            start += take
            if self._seen >= self.thresholds.window:
                reports.append(self._score())
        return reports

    def _score(self) -> DriftReport:
        psis, jss, kss = [], [], []
        drifted = informative = 0
        for feature, counts in zip(self.reference.features, self._counts, strict=True):
            score = psi(feature.proportions, counts)
            psis.append(score)
            jss.append(js_distance(feature.proportions, counts))
            kss.append(ks_binned(feature.proportions, counts))
            outside = counts[0] + counts[-1] > 0
            if feature.informative or outside:
                informative += 1
                drifted += score > self.thresholds.psi
        share = drifted / informative if informative else 0.0
        report = DriftReport(
            window=self._seen,
            psi=psis,
            js=jss,
            ks=kss,
            share_drifted=share,
            drifted=share >= self.thresholds.share,
            thresholds=self.thresholds,
        )
        for counts in self._counts:
            counts[:] = 0
        self._seen = 0
        return report
