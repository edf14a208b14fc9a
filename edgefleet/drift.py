"""Drift measures and a bounded-memory drift detector, shared by device and cloud.

The reference is what the bundle ships in ``reference_stats.json``
(``reference_statistics`` builds it from the representative samples). Per input feature
it holds one of two binnings:

- numeric: bin edges at quantiles of the samples, plus edges that give every heavy
  value (an atom holding at least one bin's share) a bin of its own, so a zero-inflated
  feature keeps its signal; an underflow and an overflow bin count values outside the
  reference range;
- categorical (declared with ``categorical=[...]``, or detected: at most
  ``DEFAULT_MAX_CATEGORIES`` distinct integer values, each seen five times on average):
  one bin per category and one "unseen" bin. An unseen value is kept by name (its
  value, up to ``MAX_UNSEEN_NAMED`` per feature and window) and reported.

A device keeps only a count per bin per feature for the current window (memory
O(features x bins), independent of traffic), and when the window is full compares it
with the reference.

Measures, on the binned distributions (reference p, window q):

- PSI, the Population Stability Index: sum (q - p) ln(q / p). Both sides are turned
  into proportions first and every bin is floored by the same ``EPSILON`` of a
  proportion, so an empty bin scores the same on either side. The primary score.
- Jensen-Shannon distance (base 2, in [0, 1]): symmetric and bounded, reported beside
  PSI.
- Kolmogorov-Smirnov statistic on the binned CDFs: the largest CDF gap.
- Wasserstein-1 distance on the binned CDFs, in the feature's own units.
- For categorical features, a chi-square statistic of the window counts against the
  reference proportions (``chi2`` in the report).

Thresholds. ``reference_statistics`` calibrates one PSI threshold per feature (and a JS
threshold and an unseen-share threshold for categorical ones) to the noise of sampling
alone: each replicate holds out a chunk of the reference rows the size of the device's
window and scores it against the proportions of the rows left, so the scored rows never
sit in the reference they are compared with (``calibrate``). The threshold is the
``1 - false_alarm_rate`` quantile over the replicates: on an unshifted stream a feature
crosses it in about ``false_alarm_rate`` of
the windows (``tests/unit/contract/test_drift_calibration.py`` measures it). The fixed
``DEFAULT_PSI_THRESHOLD`` (0.2, the usual "significant shift" line) stays a floor: the
threshold used is the larger of the two. References without calibrated thresholds
(bundles built before) use the floor alone. A device whose window is smaller than the
one the thresholds were calibrated for scales them up by the ratio of the windows (PSI
noise goes as 1 / window).

The window rule. A feature *drifts* when its PSI is above its threshold. A window
*drifts* when any of these holds:

1. share: at least ``share`` (20 %) of the informative features drift, the broad shift
   the share rule was made for;
2. single feature: one feature's PSI is at least ``far`` (2) times its calibrated
   threshold (its noise at the stated rate) and above the floor, a narrow shift (a code
   that vanished, a 0/1 flag stuck at one value) that one feature alone shows. Where
   the noise is far below the floor, as with a few thousand reference rows at a window
   of 500, this is any feature over 0.2; without calibration it is 2 x 0.2;
3. new category: a categorical feature's unseen values make up at least its unseen
   threshold (the calibrated share, floored at ``unseen_share``, 1 %, and at the share
   values too rare for the reference's size to have shown could reach: with 359
   reference rows a value of 1 % goes unseen 3 % of the time) of the window.
   Unseen values are reported by value (``new_categories``) whether or not they reach
   it.

The three are or-ed; the report says which fired (``reasons``). The calibration picks
one quantile level for every feature's thresholds such that the three rules together,
features taken as independent, flag at most ``false_alarm_rate`` of unshifted windows
(``calibrate``); the floors only lower the rate further. docs/drift.md turns the
per-window rate into a time between fleet alarms.

Features constant in the reference carry no signal unless values leave their bin;
every other feature counts. The model's own outputs (predicted class shares, or score
quantiles) can be part of the reference (``outputs``); they are scored per window
like a feature and reported separately (``output`` in the report), never mixed into
the input verdict.

Defaults, and why: 10 quantile bins (equal-mass bins make PSI as sensitive in the tails
as in the middle), fewer where the window is small: a numeric feature gets at most
``window / MIN_EXPECTED_PER_BIN`` bins (at least 2), so every bin expects 5 samples of a
window (below that most bins of a window are empty, and PSI measures the window's size,
not its distribution: on the Nile flows at a window of 4, 10 bins left the 1898 change
under the noise); a window of 500 samples (with 10 equal-mass bins, 50 expected per
bin keeps the sampling noise of PSI around 0.02, an order of magnitude below the 0.2
floor); a false-alarm rate of 1 % per feature and window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

EPSILON = 1e-4
DEFAULT_WINDOW = 500
DEFAULT_PSI_THRESHOLD = 0.2
DEFAULT_SHARE_THRESHOLD = 0.2
DEFAULT_FAR_FACTOR = 2.0
DEFAULT_UNSEEN_SHARE = 0.01
DEFAULT_FALSE_ALARM_RATE = 0.01
DEFAULT_BINS = 10
MIN_EXPECTED_PER_BIN = 5
DEFAULT_MAX_CATEGORIES = 20
MIN_ROWS_PER_CATEGORY = 5
CALIBRATION_REPLICATES = 4000
MAX_UNSEEN_NAMED = 8
SCHEMA_VERSION = 2

FeatureKind = Literal["numeric", "categorical"]


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value with 0 = below the first edge and len(edges) = above the last.

    Inside the range this matches ``np.histogram``: bins are half-open [a, b)
    except the last, which includes its right edge.
    """
    index = np.searchsorted(edges, values, side="right")
    index[values == edges[-1]] = len(edges) - 1
    return index


def category_index(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Bin of each value among sorted ``categories``; ``len(categories)`` = unseen."""
    position = np.searchsorted(categories, values)
    clipped = np.minimum(position, len(categories) - 1)
    return np.where(categories[clipped] == values, clipped, len(categories))


def with_outer_bins(proportions: Sequence[float] | np.ndarray) -> np.ndarray:
    """Reference proportions padded with empty underflow and overflow bins."""
    return np.concatenate([[0.0], np.asarray(proportions, dtype=np.float64), [0.0]])


def _smooth(p: np.ndarray) -> np.ndarray:
    """Counts or shares (last axis) as proportions, each floored by ``EPSILON``."""
    total = p.sum(axis=-1, keepdims=True)
    shares = np.divide(p, total, out=np.zeros_like(p), where=total > 0) + EPSILON
    return np.asarray(shares / shares.sum(axis=-1, keepdims=True))


def psi_rows(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """PSI along the last axis: many windows (or references) scored at once."""
    p = _smooth(np.asarray(reference, dtype=np.float64))
    q = _smooth(np.asarray(current, dtype=np.float64))
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def js_rows(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2) along the last axis."""
    p = _smooth(np.asarray(reference, dtype=np.float64))
    q = _smooth(np.asarray(current, dtype=np.float64))
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / m), axis=-1) + 0.5 * np.sum(
        q * np.log2(q / m), axis=-1
    )
    return np.asarray(np.sqrt(np.maximum(divergence, 0.0)))


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population Stability Index between two binned distributions.

    Args:
        reference: Counts or shares per bin (the reference, p).
        current: Counts or shares over the same bins (the window, q).

    Returns:
        PSI, 0 for identical distributions. Both sides become proportions floored by the
        same ``EPSILON``, so an empty bin on either side gives a finite score.
    """
    return float(psi_rows(reference, current))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) between two binned distributions."""
    return float(js_rows(reference, current))


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
    counts = np.asarray(counts, dtype=np.float64)
    expected = _smooth(np.asarray(reference_proportions, dtype=np.float64)) * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference: its bins and the share of samples in each.

    Numeric: ``edges`` and ``proportions`` with underflow and overflow bins. Categorical:
    sorted ``categories`` and ``proportions`` with one bin per category then the unseen
    bin. The thresholds are the calibrated ones (None in references built before).
    """

    index: int
    edges: np.ndarray
    proportions: np.ndarray
    categories: np.ndarray | None = None
    psi_threshold: float | None = None
    js_threshold: float | None = None
    unseen_threshold: float | None = None

    @property
    def kind(self) -> FeatureKind:
        return "numeric" if self.categories is None else "categorical"

    @property
    def informative(self) -> bool:
        """False only for a feature constant in the reference."""
        if self.categories is not None:
            return len(self.categories) > 1
        return len(self.edges) > 2

    def bins(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value (``len(proportions)`` bins)."""
        if self.categories is not None:
            return category_index(values, self.categories)
        return bin_index(values, self.edges)

    def outside(self, counts: np.ndarray) -> int:
        """Values of a window that the reference never had (outer or unseen bins)."""
        if self.categories is not None:
            return int(counts[-1])
        return int(counts[0] + counts[-1])

    @classmethod
    def from_json(cls, f: Mapping[str, Any], index: int | None = None) -> FeatureReference:
        def threshold(key: str) -> float | None:
            value = f.get(key)
            return None if value is None else float(value)

        if "categories" in f:
            categories = np.asarray(f["categories"], dtype=np.float64)
            shares = np.asarray(f["proportions"], dtype=np.float64)
            if shares.shape != categories.shape:
                raise ValueError("a categorical feature needs one proportion per category")
            order = np.argsort(categories, kind="stable")  # lookups need them sorted
            categories, shares = categories[order], shares[order]
            edges = np.asarray(f.get("edges", []), dtype=np.float64)
            proportions = np.concatenate([shares, [0.0]])
        else:
            categories = None
            edges = np.asarray(f["edges"], dtype=np.float64)
            proportions = with_outer_bins(f["proportions"])
        return cls(
            index=int(f["index"]) if index is None else index,
            edges=edges,
            proportions=proportions,
            categories=categories,
            psi_threshold=threshold("psi_threshold"),
            js_threshold=threshold("js_threshold"),
            unseen_threshold=threshold("unseen_threshold"),
        )


OutputKind = Literal["classes", "scores"]


@dataclass(frozen=True)
class OutputReference:
    """The model's outputs on the holdout: predicted classes or a score, binned."""

    kind: OutputKind
    feature: FeatureReference

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputReference:
        kind = data.get("kind", "scores")
        if kind not in ("classes", "scores"):
            raise ValueError(f"unknown output kind {kind!r}")
        return cls(kind=kind, feature=FeatureReference.from_json(data, index=0))


@dataclass(frozen=True)
class Reference:
    """Parsed ``reference_stats.json``."""

    input_name: str
    n_samples: int
    features: list[FeatureReference]
    calibrated_window: int | None = None
    outputs: OutputReference | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """Parse a bundle's ``reference_stats.json``, as decoded (any schema version).

        Raises:
            KeyError: A required key (``features``, or a feature's ``index``, ``edges`` or
                ``proportions``) is missing.
            ValueError, TypeError: A value is not a number or a list of numbers.
        """
        features = [FeatureReference.from_json(f) for f in data["features"]]
        calibration = data.get("calibration") or {}
        window = calibration.get("window")
        return cls(
            input_name=str(data.get("input", "")),
            n_samples=int(data.get("n_samples", 0)),
            features=features,
            calibrated_window=None if window is None else int(window),
            outputs=_outputs_from_json(data.get("outputs")),
        )


def _outputs_from_json(data: Any) -> OutputReference | None:
    """The outputs' reference; None, so input drift still runs, when a newer builder
    wrote a kind this reader does not know."""
    if data is None:
        return None
    try:
        return OutputReference.from_json(data)
    except (KeyError, ValueError, TypeError) as e:
        logger.warning("output drift off: reference unreadable reason=%s", e)
        return None


# --- building the reference (control plane, at build time) -------------------------------


def _is_categorical(column: np.ndarray, max_categories: int) -> bool:
    distinct = np.unique(column)
    if len(distinct) > max_categories or not np.all(np.isfinite(distinct)):
        return False
    if len(distinct) * MIN_ROWS_PER_CATEGORY > len(column):
        return False
    return bool(np.all(distinct == np.round(distinct)))


def _numeric_edges(column: np.ndarray, bins: int) -> np.ndarray:
    """Quantile edges, plus a bin of its own for each value holding a bin's share."""
    edges = np.quantile(column, np.linspace(0.0, 1.0, bins + 1))
    low, high = float(edges[0]), float(edges[-1])
    if low == high:
        return np.array([low - 0.5, low + 0.5])
    values, counts = np.unique(column, return_counts=True)
    extra = []
    for value in values[counts * bins >= len(column)]:
        extra.append(value)
        extra.append(np.nextafter(value, np.inf) if value < high else np.nextafter(value, -np.inf))
    edges = np.unique(np.concatenate([edges, np.asarray(extra, dtype=np.float64)]))
    return edges[(edges >= low) & (edges <= high)]


def _category_edges(categories: np.ndarray) -> np.ndarray:
    """Edges with one category per bin, for agents that read numeric bins only."""
    if len(categories) == 1:
        return np.array([categories[0] - 0.5, categories[0] + 0.5])
    middles = (categories[:-1] + categories[1:]) / 2
    return np.concatenate([[categories[0]], middles, [categories[-1]]])


def _feature_entry(
    column: np.ndarray, index: int, *, categorical: bool, bins: int, categories: Any = None
) -> tuple[dict[str, Any], FeatureReference]:
    n = len(column)
    if categorical:
        cats = np.unique(column if categories is None else np.asarray(categories, np.float64))
        counts = np.bincount(category_index(column, cats), minlength=len(cats) + 1)
        proportions = counts[:-1] / n
        entry: dict[str, Any] = {
            "index": index,
            "kind": "categorical",
            "categories": [float(c) for c in cats],
            "edges": [float(e) for e in _category_edges(cats)],
            "proportions": [float(p) for p in proportions],
        }
        reference = FeatureReference(
            index, np.asarray(entry["edges"]), np.concatenate([proportions, [0.0]]), cats
        )
    else:
        edges = _numeric_edges(column, bins)
        counts, _ = np.histogram(column, bins=edges)
        proportions = counts / n
        entry = {
            "index": index,
            "kind": "numeric",
            "edges": [float(e) for e in edges],
            "proportions": [float(p) for p in proportions],
        }
        reference = FeatureReference(index, edges, with_outer_bins(proportions))
    return entry, reference


@dataclass(frozen=True)
class _Noise:
    """One feature's scores over the calibration replicates."""

    psi: np.ndarray
    js: np.ndarray | None = None
    unseen: np.ndarray | None = None


def _noise(
    reference: FeatureReference,
    column: np.ndarray,
    *,
    window: int,
    replicates: int,
    rng: np.random.Generator,
) -> _Noise | None:
    n = len(column)
    held = min(window, n // 2)
    if held < 1:
        return None
    total = np.bincount(reference.bins(column), minlength=len(reference.proportions))
    chunk = rng.multivariate_hypergeometric(total, held, size=replicates)
    rest = (total - chunk).astype(np.float64)
    if held == window:
        drawn = chunk.astype(np.float64)
    else:
        drawn = rng.multinomial(window, chunk / held).astype(np.float64)
    if reference.categories is None:
        return _Noise(psi_rows(rest, drawn))
    gone = rest[:, :-1] == 0  # only the held-out chunk has these: unseen
    drawn[:, -1] += np.sum(drawn[:, :-1] * gone, axis=1)
    drawn[:, :-1] *= ~gone
    return _Noise(psi_rows(rest, drawn), js_rows(rest, drawn), drawn[:, -1] / window)


def _window_rate(
    noises: Sequence[_Noise], level: float, *, share: float, far: float, unseen_floor: float
) -> float:
    """The window rule's false-alarm rate when each threshold is the ``1 - level``
    quantile, the features taken as independent (share rule + single-feature rule +
    new-category rule, summed: an upper bound)."""
    count = len(noises)
    needed = max(1, math.ceil(share * count))
    share_rate = sum(
        math.comb(count, k) * level**k * (1 - level) ** (count - k)
        for k in range(needed, count + 1)
    )
    far_rate = sum(
        float(np.mean(noise.psi > far * np.quantile(noise.psi, 1 - level))) for noise in noises
    )
    unseen_rate = sum(
        float(np.mean(noise.unseen >= max(np.quantile(noise.unseen, 1 - level), unseen_floor)))
        for noise in noises
        if noise.unseen is not None
    )
    return share_rate + far_rate + unseen_rate


def unseen_bound(n: int, window: int, level: float) -> float:
    """The unseen share a window may reach from values the reference missed by chance.

    A value ``n`` reference rows never showed can still hold up to ``-ln(level) / n`` of
    the population (its chance of going unseen is then ``level``); the bound is the
    share of a window of that binomial count exceeded with probability ``level``.
    """
    if n <= 0:
        return 1.0
    share = min(1.0, -math.log(level) / n)
    if share >= 1.0:
        return 1.0
    log_p, log_q = math.log(share), math.log1p(-share)
    tail = 1.0
    for k in range(window + 1):
        log_pmf = (
            math.lgamma(window + 1)
            - math.lgamma(k + 1)
            - math.lgamma(window - k + 1)
            + k * log_p
            + (window - k) * log_q
        )
        tail -= math.exp(log_pmf)
        if tail <= level:  # P(count > k) <= level: flag from k + 1 on
            return (k + 1) / window
    return 1.0


def calibrate(
    references: Sequence[FeatureReference],
    columns: np.ndarray,
    *,
    window: int,
    false_alarm_rate: float,
    share: float = DEFAULT_SHARE_THRESHOLD,
    far: float = DEFAULT_FAR_FACTOR,
    replicates: int = CALIBRATION_REPLICATES,
    seed: int = 0,
) -> tuple[list[dict[str, float]], float]:
    """Per feature, the scores sampling noise alone reaches at ``window`` samples.

    Each replicate holds out a random chunk of the reference rows, scores it as a window
    against the shares of the rows left, and so never compares rows with themselves; a
    categorical value only the held-out chunk has is unseen there, as a new value is on
    a device. The chunk is ``window`` rows (drawn without replacement: a multivariate
    hypergeometric over the feature's bin counts); when the reference is smaller than
    two windows it is half the rows, and the window is drawn from it with replacement,
    which only adds noise (thresholds err high).

    A categorical feature's unseen threshold is also at least ``unseen_bound``: values
    too rare for the reference to have shown are not new.

    The thresholds are one quantile of each feature's replicate scores, the same level
    for every feature: the largest level (at most ``false_alarm_rate``) at which the
    window rule (``share``, ``far``, new categories), features taken as independent,
    flags at most ``false_alarm_rate`` of unshifted windows (searched down to one
    replicate's worth, ``1 / replicates``, where the thresholds are the noise's maxima).

    Args:
        references: The features, binned over all of ``columns``.
        columns: The reference rows, [n, features], in the order of ``references``.
        window: The device's window, in samples.
        false_alarm_rate: Share of unshifted windows the window rule may flag.
        share: The window rule's share of drifting features.
        far: The window rule's single-feature multiple of a threshold.
        replicates: Windows drawn per feature.
        seed: Seeds the draws: the same samples give the same thresholds.

    Returns:
        Per feature ``{"psi_threshold"}``, plus ``js_threshold`` and ``unseen_threshold``
        for categorical ones (empty dicts when there are fewer than two rows), and the
        per-feature level used.
    """
    rng = np.random.default_rng(seed)
    noises = [
        _noise(reference, column, window=window, replicates=replicates, rng=rng)
        for reference, column in zip(references, columns.T, strict=True)
    ]
    # Constant features are left out, as the device leaves them out of the window rule.
    known = [
        noise
        for noise, reference in zip(noises, references, strict=True)
        if noise is not None and reference.informative
    ]
    level = false_alarm_rate
    floor = 1.0 / replicates
    while level > floor and known:
        unseen_floor = max(DEFAULT_UNSEEN_SHARE, unseen_bound(len(columns), window, level))
        rate = _window_rate(known, level, share=share, far=far, unseen_floor=unseen_floor)
        if rate <= false_alarm_rate:
            break
        level = max(level / 1.25, floor)
    out: list[dict[str, float]] = []
    for noise in noises:
        if noise is None:
            out.append({})
            continue
        result = {"psi_threshold": float(np.quantile(noise.psi, 1 - level))}
        if noise.js is not None and noise.unseen is not None:
            result["js_threshold"] = float(np.quantile(noise.js, 1 - level))
            result["unseen_threshold"] = max(
                float(np.quantile(noise.unseen, 1 - level)),
                unseen_bound(len(columns), window, level),
            )
        out.append(result)
    return out, level


def _output_values(outputs: np.ndarray, kind: OutputKind) -> np.ndarray:
    array = np.asarray(outputs)
    if kind == "classes" and array.ndim == 2 and array.shape[1] > 1:
        return np.argmax(array, axis=1).astype(np.float64)
    return array.reshape(len(array), -1)[:, 0].astype(np.float64)


def reference_statistics(
    samples: np.ndarray,
    *,
    input_name: str,
    categorical: Sequence[int] | None = None,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    bins: int = DEFAULT_BINS,
    window: int = DEFAULT_WINDOW,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    outputs: np.ndarray | None = None,
    output_kind: OutputKind | None = None,
    n_classes: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``reference_stats.json`` of a bundle: binned features and calibrated thresholds.

    Args:
        samples: Representative inputs, [n, features].
        input_name: The model input they feed.
        categorical: Indices of features to bin by category whatever their values; other
            features are categorical when they look it (few distinct integer values).
        max_categories: Most distinct values a detected categorical feature has.
        bins: Quantile bins per numeric feature (fewer for a small window, so each bin
            expects ``MIN_EXPECTED_PER_BIN`` samples of it).
        window: The device's window the thresholds are calibrated for.
        false_alarm_rate: Share of unshifted windows a feature may cross its threshold in.
        outputs: The float model's outputs on the same rows (or the holdout): class scores
            [n, classes], labels [n] or scores [n]; None to leave output drift out.
        output_kind: ``classes`` (predicted-class shares) or ``scores`` (score quantiles);
            by default classes for 2-D or integer outputs, scores otherwise.
        n_classes: With classes, the number of classes (unpredicted classes get a bin).
        seed: Seeds the calibration.

    Returns:
        The decoded JSON (schema version 2; ``Reference.from_json`` reads it).
    """
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples.reshape(len(samples), -1)
    declared = set(categorical or ())
    bins = max(2, min(bins, window // MIN_EXPECTED_PER_BIN))
    entries, references = [], []
    for index in range(samples.shape[1]):
        column = samples[:, index]
        is_categorical = index in declared or _is_categorical(column, max_categories)
        entry, reference = _feature_entry(column, index, categorical=is_categorical, bins=bins)
        entries.append(entry)
        references.append(reference)
    thresholds, level = calibrate(
        references, samples, window=window, false_alarm_rate=false_alarm_rate, seed=seed
    )
    for entry, feature_thresholds in zip(entries, thresholds, strict=True):
        entry.update(feature_thresholds)
    stats: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "input": input_name,
        "n_samples": int(samples.shape[0]),
        "features": entries,
        "calibration": {
            "window": window,
            "false_alarm_rate": false_alarm_rate,
            "feature_level": level,
            "replicates": CALIBRATION_REPLICATES,
            "psi_floor": DEFAULT_PSI_THRESHOLD,
        },
    }
    if outputs is not None:
        raw = np.asarray(outputs)
        kind: OutputKind = output_kind or (
            "classes"
            if (raw.ndim == 2 and raw.shape[1] > 1) or np.issubdtype(raw.dtype, np.integer)
            else "scores"
        )
        values = _output_values(raw, kind)
        classes = None
        if kind == "classes":
            count = n_classes or (raw.shape[1] if raw.ndim == 2 and raw.shape[1] > 1 else None)
            classes = np.arange(count) if count else None
        entry, reference = _feature_entry(
            values, 0, categorical=kind == "classes", bins=bins, categories=classes
        )
        (output_thresholds,), _ = calibrate(
            [reference],
            values[:, None],
            window=window,
            false_alarm_rate=false_alarm_rate,
            seed=seed,
        )
        entry.update(output_thresholds)
        stats["outputs"] = {**entry, "kind": kind}
    return stats


# --- scoring windows (device) -------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    """When a window is scored, and when it counts as drifted (see the module docstring).

    ``window``: samples per window; ``psi``: the floor under every feature's calibrated
    threshold (the threshold itself in references without calibration); ``share``: a
    window drifts when at least this share of informative features do; ``far``: or when
    one feature's PSI reaches this multiple of its calibrated threshold (and the
    floor); ``unseen_share``: or when values a categorical feature never had make up at
    least this share of the window (the floor under the calibrated share).
    """

    window: int = DEFAULT_WINDOW
    psi: float = DEFAULT_PSI_THRESHOLD
    share: float = DEFAULT_SHARE_THRESHOLD
    far: float = DEFAULT_FAR_FACTOR
    unseen_share: float = DEFAULT_UNSEEN_SHARE


@dataclass
class NewCategory:
    """Values of a categorical feature (or output) that its reference never had."""

    feature: int
    values: dict[float, int]
    count: int
    share: float
    flags: bool = False  # enough of the window to drift it on its own

    def to_data(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "count": self.count,
            "share": round(self.share, 4),
            "flags": self.flags,
            "values": [[_plain(v), c] for v, c in sorted(self.values.items())],
        }


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


@dataclass
class OutputDrift:
    """The model's outputs in one window against its outputs on the holdout."""

    kind: OutputKind
    samples: int
    psi: float
    js: float
    threshold: float
    drifted: bool
    new_classes: NewCategory | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "samples": self.samples,
            "psi": round(self.psi, 4),
            "js": round(self.js, 4),
            "threshold": round(self.threshold, 4),
            "drifted": self.drifted,
            "new": None if self.new_classes is None else self.new_classes.to_data(),
        }


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
    feature_thresholds: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    far_features: list[int] = field(default_factory=list)
    new_categories: list[NewCategory] = field(default_factory=list)
    chi2: dict[int, float] = field(default_factory=dict)
    output: OutputDrift | None = None

    def _threshold(self, i: int) -> float:
        if i < len(self.feature_thresholds):
            return self.feature_thresholds[i]
        return self.thresholds.psi

    def drifted_features(self) -> list[int]:
        return [i for i, score in enumerate(self.psi) if score > self._threshold(i)]

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "window": self.window,
            "share_drifted": round(self.share_drifted, 4),
            "drifted": self.drifted,
            "drifted_features": self.drifted_features(),
            "psi": [round(s, 4) for s in self.psi],
            "js": [round(s, 4) for s in self.js],
            "ks": [round(s, 4) for s in self.ks],
            "psi_threshold": self.thresholds.psi,
            "share_threshold": self.thresholds.share,
            "feature_thresholds": [round(t, 4) for t in self.feature_thresholds],
            "reasons": self.reasons,
            "far_features": self.far_features,
            "new_categories": [c.to_data() for c in self.new_categories],
            "chi2": {str(i): round(v, 3) for i, v in self.chi2.items()},
        }
        if self.output is not None:
            data["output"] = self.output.to_data()
        return data


class _Counts:
    """One feature's window: a count per bin, and the first unseen values by name."""

    def __init__(self, reference: FeatureReference) -> None:
        self.reference = reference
        self.counts = np.zeros(len(reference.proportions), dtype=np.int64)
        self.unseen: dict[float, int] = {}

    def add(self, values: np.ndarray) -> None:
        index = self.reference.bins(values)
        self.counts += np.bincount(index, minlength=len(self.counts))
        if self.reference.categories is None:
            return
        new = values[index == len(self.counts) - 1]
        if len(new) == 0:
            return
        for value, count in zip(*np.unique(new, return_counts=True), strict=True):
            key = float(value)
            if key in self.unseen or len(self.unseen) < MAX_UNSEEN_NAMED:
                self.unseen[key] = self.unseen.get(key, 0) + int(count)

    def reset(self) -> None:
        self.counts[:] = 0
        self.unseen = {}


class DriftDetector:
    """Counts inputs per reference bin and scores each full window against the reference.

    Memory is one integer per bin per feature (and at most ``MAX_UNSEEN_NAMED`` unseen
    values per categorical feature) whatever the traffic; ``observe`` is vectorised over
    a batch. Not thread-safe: the caller serialises.
    """

    def __init__(self, reference: Reference, thresholds: DriftThresholds | None = None) -> None:
        """Start with an empty window.

        Args:
            reference: The bundle's reference distributions.
            thresholds: Window size and drift thresholds; the defaults when None.
        """
        self.reference = reference
        self.thresholds = thresholds or DriftThresholds()
        self._features = [_Counts(f) for f in reference.features]
        self._counts = [c.counts for c in self._features]
        self._output = None if reference.outputs is None else _Counts(reference.outputs.feature)
        self._output_seen = 0
        self._seen = 0
        scale = 1.0
        calibrated = reference.calibrated_window
        if calibrated and self.thresholds.window < calibrated:
            scale = calibrated / self.thresholds.window
        self._scale = scale
        self.feature_thresholds = [self._psi_threshold(f) for f in reference.features]
        self.far_thresholds = [self._far_threshold(f) for f in reference.features]

    def _far_threshold(self, feature: FeatureReference) -> float:
        """Where one feature drifts the window alone: ``far`` times its noise (the
        calibrated threshold; the floor when there is none), and above the floor."""
        noise = self.thresholds.psi if feature.psi_threshold is None else feature.psi_threshold
        return max(self.thresholds.psi, self.thresholds.far * noise * self._scale)

    def _psi_threshold(self, feature: FeatureReference) -> float:
        calibrated = (feature.psi_threshold or 0.0) * self._scale
        return max(self.thresholds.psi, calibrated)

    def _unseen_threshold(self, feature: FeatureReference) -> float:
        return max(self.thresholds.unseen_share, (feature.unseen_threshold or 0.0) * self._scale)

    @property
    def seen(self) -> int:
        """Samples in the current (not yet full) window."""
        return self._seen

    def observe(self, batch: np.ndarray, outputs: np.ndarray | None = None) -> list[DriftReport]:
        """Count a batch of inputs (and the model's outputs for them), scoring every window
        it completes.

        A batch may complete several windows, or none; the counts of a window that is not
        yet full carry over to the next call.

        Args:
            batch: Inputs as [n, features] (or anything that reshapes to it row by row).
            outputs: The model's outputs for the same rows (class scores [n, classes],
                labels or scores [n]); ignored when the reference has none.

        Returns:
            One report per window completed, oldest first; empty when none was.
        """
        batch = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        values = None
        if outputs is not None and self.reference.outputs is not None:
            values = _output_values(np.asarray(outputs), self.reference.outputs.kind)
            if len(values) != len(batch):
                values = None
        reports = []
        start = 0
        while start < len(batch):
            take = min(self.thresholds.window - self._seen, len(batch) - start)
            chunk = batch[start : start + take]
            for counts in self._features:
                counts.add(chunk[:, counts.reference.index])
            if values is not None and self._output is not None:
                self._output.add(values[start : start + take])
                self._output_seen += take
            self._seen += take
            start += take
            if self._seen >= self.thresholds.window:
                reports.append(self._score())
        return reports

    def _score(self) -> DriftReport:
        psis, jss, kss = [], [], []
        chi2: dict[int, float] = {}
        drifted = informative = 0
        far: list[int] = []
        new: list[NewCategory] = []
        for i, (window, threshold, far_threshold) in enumerate(
            zip(self._features, self.feature_thresholds, self.far_thresholds, strict=True)
        ):
            feature, counts = window.reference, window.counts
            score = psi(feature.proportions, counts)
            psis.append(score)
            jss.append(js_distance(feature.proportions, counts))
            kss.append(ks_binned(feature.proportions, counts))
            outside = feature.outside(counts)
            if feature.categories is not None:
                chi2[i] = chi_square(feature.proportions, counts)
                if outside:
                    share = outside / self._seen
                    flags = share >= self._unseen_threshold(feature)
                    new.append(
                        NewCategory(feature.index, dict(window.unseen), outside, share, flags)
                    )
            if feature.informative or outside:
                informative += 1
                drifted += score > threshold
                if score >= far_threshold and score > threshold:
                    far.append(i)
        share = drifted / informative if informative else 0.0
        reasons = []
        if informative and share >= self.thresholds.share:
            reasons.append("share")
        if far:
            reasons.append("single_feature")
        if any(category.flags for category in new):
            reasons.append("new_category")
        report = DriftReport(
            window=self._seen,
            psi=psis,
            js=jss,
            ks=kss,
            share_drifted=share,
            drifted=bool(reasons),
            thresholds=self.thresholds,
            feature_thresholds=list(self.feature_thresholds),
            reasons=reasons,
            far_features=far,
            new_categories=new,
            chi2=chi2,
            output=self._score_output(),
        )
        for window in self._features:
            window.reset()
        self._seen = 0
        return report

    def _score_output(self) -> OutputDrift | None:
        if self._output is None or self.reference.outputs is None or not self._output_seen:
            return None
        window, seen = self._output, self._output_seen
        feature, counts = window.reference, window.counts
        threshold = self._psi_threshold(feature)
        if seen < self.thresholds.window:  # answers missing from some batches: noisier
            threshold *= self.thresholds.window / seen
        score = psi(feature.proportions, counts)
        new = None
        outside = feature.outside(counts)
        if feature.categories is not None and outside:
            share = outside / seen
            flags = share >= self._unseen_threshold(feature)
            new = NewCategory(-1, dict(window.unseen), outside, share, flags)
        unseen_drift = new is not None and new.flags
        result = OutputDrift(
            kind=self.reference.outputs.kind,
            samples=seen,
            psi=score,
            js=js_distance(feature.proportions, counts),
            threshold=threshold,
            drifted=score > threshold or unseen_drift,
            new_classes=new,
        )
        window.reset()
        self._output_seen = 0
        return result
