"""Real datasets with documented drift, streamed in their natural order, and the detectors
the drift benchmark runs on them side by side.

Every dataset ships inside a PyPI wheel (the ``bench-drift`` extra), so nothing is fetched
at run time:

- Nile (statsmodels, ``statsmodels/datasets/nile/nile.csv``): the annual flow of the Nile
  at Aswan, 1871-1970. The dataset's own description documents a change point near 1898
  (Cobb 1978); the flow drops by about a fifth from then on.
- US census, Massachusetts (NannyML, ``nannyml/datasets/data/employment_MA_*.pq``): the
  American Community Survey person records that folktables extracts for the employment
  task, 2015 as NannyML's reference year and 2016-2018 as its analysis years: one
  numeric feature (age) and fifteen integer-coded ones. The documented boundary is the
  survey year; what changes across it is the population itself, year on year. And the
  order: from 2017 on the file brings the group-quarters persons (RELP 16 and 17, 7 % of
  the rows) as one block (at the end of 2017, at the start of 2018) where 2015 and 2016
  interleave them with households, so most 2017-2018 windows in natural order miss that
  subpopulation. The data shows it (see ``census_case``); it matches the Census Bureau's
  2017 change of the PUMS serial number to a year + GQ/HU form, by which the rows sort.

A detector is a function from (reference rows, stream rows) to alarm positions in the
stream (the index of the sample at which it raised the alarm); the benchmark turns those
into false-alarm rates and detection delays the same way for every detector.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.drift import (
    DEFAULT_SHARE_THRESHOLD,
    DriftDetector,
    DriftThresholds,
    Reference,
    reference_statistics,
)

ALPHA = 0.01


@dataclass(frozen=True, eq=False)
class DriftCase:
    """One dataset: its reference, a stable stream and the stream after the documented
    change, all in the order the data comes in."""

    name: str
    change: str  # where the documented change is, in the data's own terms
    source: str  # the package and file the rows come from
    columns: list[str]
    reference: np.ndarray
    stable: np.ndarray
    after: np.ndarray
    window: int
    categorical: list[int] = field(default_factory=list)
    segments: list[tuple[str, int]] = field(default_factory=list)  # (label, rows) of after


Detector = Callable[[DriftCase, np.ndarray], list[int]]


def nile_case(*, quick: bool = False) -> DriftCase:
    """Nile flows: reference 1871-1885, stable 1886-1897, documented change from 1898.

    A hundred yearly values give small windows only: four years a window (``quick``
    changes nothing: the data is small).
    """
    from statsmodels.datasets import nile

    data = nile.load_pandas().data
    years = data["year"].to_numpy().astype(int)
    volume = data["volume"].to_numpy(dtype=np.float64)[:, None]
    return DriftCase(
        name="Nile flow 1871-1970",
        change="1898 (statsmodels: 'apparent changepoint near 1898')",
        source="statsmodels/datasets/nile/nile.csv",
        columns=["volume"],
        reference=volume[years < 1886],
        stable=volume[(years >= 1886) & (years < 1898)],
        after=volume[years >= 1898],
        window=4,
    )


def nannyml_data_dir() -> Path:
    """Where NannyML's wheel keeps its datasets, found without importing NannyML (its
    import is slow and loads far more than the files need)."""
    spec = importlib.util.find_spec("nannyml")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nannyml is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def census_case(*, quick: bool = False) -> DriftCase:
    """ACS Massachusetts persons: reference = the first half of 2015 as it comes, stable =
    the second half of 2015, change = the survey year 2016 (then 2017, 2018)."""
    import pandas as pd

    data = nannyml_data_dir()
    reference_df = pd.read_parquet(data / "employment_MA_reference.pq")
    analysis_df = pd.read_parquet(data / "employment_MA_analysis.pq")
    columns = [
        "AGEP", "SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG",
        "MIL", "ANC", "NATIVITY", "DEAR", "DEYE", "DREM", "SEX", "RAC1P",
    ]  # fmt: skip
    year_2015 = reference_df[columns].astype(np.float64).to_numpy()
    later = analysis_df[columns].astype(np.float64).to_numpy()
    half = len(year_2015) // 2
    reference, stable, after = year_2015[:half], year_2015[half:], later
    window = 500
    years = analysis_df["year"].to_numpy()
    if quick:
        reference, stable = reference[:4000], stable[: 12 * window]
        keep = np.concatenate([np.flatnonzero(years == y)[: 6 * window] for y in (2016, 2017)])
        after, years = after[keep], years[keep]
    segments = [(str(year), int(np.sum(years == year))) for year in np.unique(years)]
    return DriftCase(
        name="US census MA 2015-2018",
        change="survey year 2016 (ACS PUMS; NannyML's analysis period)",
        source="nannyml/datasets/data/employment_MA_{reference,analysis}.pq",
        columns=columns,
        reference=reference,
        stable=stable,
        after=after,
        window=window,
        categorical=list(range(1, len(columns))),
        segments=segments,
    )


# --- detectors ----------------------------------------------------------------------------


def window_ends(flags: Sequence[bool], window: int) -> list[int]:
    """Alarm positions of window verdicts: the last sample of each flagged window."""
    return [(i + 1) * window - 1 for i, flagged in enumerate(flags) if flagged]


@cache
def edgefleet_reference(case: DriftCase) -> Reference:
    """The case's reference as a bundle builder makes it (binned, thresholds calibrated)."""
    stats: dict[str, Any] = reference_statistics(
        case.reference, input_name="x", window=case.window, categorical=case.categorical
    )
    return Reference.from_json(stats)


def edgefleet_detector(case: DriftCase, data: np.ndarray) -> list[int]:
    """edgefleet's device detector, its reference built as a bundle builds it."""
    detector = DriftDetector(edgefleet_reference(case), DriftThresholds(window=case.window))
    return window_ends([r.drifted for r in detector.observe(data)], case.window)


def ks_detector(case: DriftCase, data: np.ndarray) -> list[int]:
    """scipy's two-sample KS per feature against the reference rows, Bonferroni-corrected
    alpha 0.01, a window flagged when edgefleet's share of features rejects."""
    from scipy.stats import ks_2samp

    reference = case.reference
    informative = [i for i in range(reference.shape[1]) if np.ptp(reference[:, i]) > 0]
    alpha = ALPHA / max(len(informative), 1)
    flags = []
    for start in range(0, len(data) - case.window + 1, case.window):
        window = data[start : start + case.window]
        rejected = sum(ks_2samp(reference[:, i], window[:, i]).pvalue < alpha for i in informative)
        flags.append(rejected / max(len(informative), 1) >= DEFAULT_SHARE_THRESHOLD)
    return window_ends(flags, case.window)


def adwin_detector(case: DriftCase, data: np.ndarray) -> list[int]:
    """river's ADWIN (default delta 0.002), one per feature, warmed up on the reference
    rows; an alarm wherever any feature's ADWIN detects a change."""
    from river.drift import ADWIN

    alarms = []
    for column in range(data.shape[1]):
        adwin = ADWIN()
        for value in case.reference[:, column]:
            adwin.update(float(value))
        for i, value in enumerate(data[:, column]):
            adwin.update(float(value))
            if adwin.drift_detected:
                alarms.append(i)
    return sorted(set(alarms))


def nannyml_detector(case: DriftCase, data: np.ndarray) -> list[int]:
    """NannyML's univariate drift calculator with its defaults (Jensen-Shannon, thresholds
    from the spread over reference chunks), chunks of the window's size; a chunk is flagged
    when any feature alerts."""
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
    import pandas as pd
    from nannyml.drift.univariate import UnivariateDriftCalculator

    categorical = [case.columns[i] for i in case.categorical]
    reference = pd.DataFrame(case.reference, columns=case.columns)
    analysis = pd.DataFrame(data[: len(data) // case.window * case.window], columns=case.columns)
    for frame in (reference, analysis):
        frame[categorical] = frame[categorical].astype(np.int64)
    calculator = UnivariateDriftCalculator(
        column_names=case.columns,
        treat_as_categorical=categorical,
        chunk_size=case.window,
    )
    calculator.fit(reference)
    result = calculator.calculate(analysis).filter(period="analysis").to_df()
    alert_columns = [c for c in result.columns if c[-1] == "alert"]
    flags = result[alert_columns].any(axis=1).to_list()
    return window_ends(flags, case.window)


def available_detectors() -> tuple[dict[str, Detector], list[str]]:
    """The detectors whose libraries are installed, and a note for each one that is not."""
    detectors: dict[str, Detector] = {
        "edgefleet PSI": edgefleet_detector,
        "scipy KS": ks_detector,
    }
    missing = []
    for name, module, detector in (
        ("river ADWIN", "river", adwin_detector),
        ("NannyML JS", "nannyml", nannyml_detector),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{name}: {module} is not installed (pip install '.[bench-drift]')")
            continue
        detectors[name] = detector
    return detectors, missing
