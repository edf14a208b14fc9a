"""How well and how cheaply the device drift detector finds shifts, against other detectors.

Two parts. Real drift (``bench/drift_real.py``): datasets with a documented change that
ship inside PyPI wheels (statsmodels' Nile flows, NannyML's US census extract), streamed
in their natural order, with edgefleet's detector beside scipy's KS, river's ADWIN and
NannyML's univariate drift calculator in the same run. Per dataset and detector:

- false alarms: share of the stable part's windows with an alarm, in the data's natural
  order and shuffled (ADWIN, which alarms per sample, counts a window with any alarm);
- delay: samples from the documented change to the first alarm after it (missed: none);
- windows flagged after the change, and CPU per sample over the whole stream (each
  detector's whole call: KS, ADWIN and NannyML fit on or warm up with the reference inside
  it; edgefleet's reference is built once beforehand, as the control plane builds it);

and what the device pays: edgefleet's agent-side window scoring (``DriftDetector.observe``,
what the agent's drift thread runs on every request's inputs), µs per sample, at batch
sizes of 1 and 32 rows.

Synthetic shifts (full mode only): scikit-learn's bundled digits (64 pixel features) and
breast-cancer (30 tabular features). The reference is built exactly as bundles build it (quantile
bins of a representative sample); streams are drawn from disjoint rows.

- False alarms: share of windows flagged over a long unshifted stream.
- Detection delay: samples from the start of a shifted stream to the first flagged
  window, for shifts of known size (every feature moved by delta x its std).
- CPU: seconds per sample of scoring.

The reference implementation runs on the same windows in the same process: a
two-sample Kolmogorov-Smirnov test per feature against the reference sample
(scipy.stats.ks_2samp), with a Bonferroni-corrected alpha of 0.01, flagging a
window when the same share of features as edgefleet's rule rejects.

    pip install '.[bench-drift]'
    .venv/bin/python bench/drift_detection.py           # everything (a few minutes)
    .venv/bin/python bench/drift_detection.py --quick   # the real-data table on fewer rows
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from drift_real import (
    Detector,
    DriftCase,
    available_detectors,
    census_case,
    edgefleet_reference,
    nile_case,
)
from scipy.stats import ks_2samp
from sklearn.datasets import load_breast_cancer, load_digits

from edgefleet.drift import (
    DEFAULT_SHARE_THRESHOLD,
    DriftDetector,
    DriftThresholds,
    Reference,
    reference_statistics,
)

WINDOW = 500
UNSHIFTED_WINDOWS = 200
SHIFTS = (0.1, 0.25, 0.5, 1.0)
MAX_DELAY_WINDOWS = 20
ALPHA = 0.01


def ks_window_flag(reference: np.ndarray, window: np.ndarray) -> bool:
    informative = [i for i in range(reference.shape[1]) if np.ptp(reference[:, i]) > 0]
    alpha = ALPHA / max(len(informative), 1)
    rejected = sum(ks_2samp(reference[:, i], window[:, i]).pvalue < alpha for i in informative)
    return rejected / max(len(informative), 1) >= DEFAULT_SHARE_THRESHOLD


def stream(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows[rng.integers(0, len(rows), n)]


def run_dataset(name: str, x: np.ndarray, rng: np.random.Generator) -> list[str]:
    order = rng.permutation(len(x))
    ref_rows, stream_rows = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
    reference = Reference.from_json(reference_statistics(ref_rows, input_name="x"))
    std = stream_rows.std(axis=0) + 1e-9

    def edgefleet_flags(data: np.ndarray) -> list[bool]:
        detector = DriftDetector(reference, DriftThresholds(window=WINDOW))
        return [r.drifted for r in detector.observe(data)]

    def ks_flags(data: np.ndarray) -> list[bool]:
        return [
            ks_window_flag(ref_rows, data[i : i + WINDOW])
            for i in range(0, len(data) - WINDOW + 1, WINDOW)
        ]

    methods: dict[str, Callable[[np.ndarray], list[bool]]] = {
        "edgefleet PSI": edgefleet_flags,
        "scipy KS": ks_flags,
    }
    lines = []
    unshifted = stream(stream_rows, WINDOW * UNSHIFTED_WINDOWS, rng)
    shifted_streams = {
        delta: stream(stream_rows, WINDOW * MAX_DELAY_WINDOWS, rng) + delta * std
        for delta in SHIFTS
    }
    for method, flags_of in methods.items():
        started = time.perf_counter()
        flags = flags_of(unshifted)
        seconds = time.perf_counter() - started
        false_alarm = sum(flags) / len(flags)
        delays = []
        for delta in SHIFTS:
            shifted = flags_of(shifted_streams[delta])
            first = next((i for i, f in enumerate(shifted) if f), None)
            delays.append("none" if first is None else str((first + 1) * WINDOW))
        lines.append(
            f"| {name} | {method} | {false_alarm:.3f} ({sum(flags)}/{len(flags)}) | "
            + " | ".join(delays)
            + f" | {seconds / len(unshifted) * 1e6:.1f} |"
        )
    return lines


@dataclass(frozen=True)
class RealRow:
    """One detector on one real dataset: what the table prints."""

    dataset: str
    detector: str
    stable_windows: int
    false_alarms: int
    false_alarms_shuffled: int
    delay: int | None  # samples from the change to the first alarm; None = missed
    after_windows: int
    after_flagged: int
    us_per_sample: float
    segments: list[tuple[str, int, int]]  # (label, windows, flagged) of the after part

    def line(self) -> str:
        n = self.stable_windows
        delay = "missed" if self.delay is None else str(self.delay)
        return (
            f"| {self.dataset} | {self.detector} | {self.false_alarms / n:.3f} "
            f"({self.false_alarms}/{n}) | {self.false_alarms_shuffled / n:.3f} "
            f"({self.false_alarms_shuffled}/{n}) | {delay} | "
            f"{self.after_flagged}/{self.after_windows} | {self.us_per_sample:.1f} |"
        )


def windows_alarmed(alarms: Sequence[int], window: int, start: int, stop: int) -> int:
    """Windows of ``[start, stop)`` (counted from ``start``) holding at least one alarm."""
    return len({(a - start) // window for a in alarms if start <= a < stop})


def run_real(case: DriftCase, name: str, detector: Detector, seed: int = 0) -> RealRow:
    """False alarms on the stable part (natural order, shuffled), delay after the change."""
    window = case.window
    stable = case.stable[: len(case.stable) // window * window]
    shuffled = stable[np.random.default_rng(seed).permutation(len(stable))]
    stream_rows = np.concatenate([stable, case.after])
    natural = detector(case, stable)
    mixed = detector(case, shuffled)
    started = time.perf_counter()
    alarms = detector(case, stream_rows)
    seconds = time.perf_counter() - started
    change = len(stable)
    after = [a for a in alarms if a >= change]
    return RealRow(
        dataset=case.name,
        detector=name,
        stable_windows=len(stable) // window,
        false_alarms=windows_alarmed(natural, window, 0, len(stable)),
        false_alarms_shuffled=windows_alarmed(mixed, window, 0, len(stable)),
        delay=after[0] - change + 1 if after else None,
        after_windows=len(case.after) // window,
        after_flagged=windows_alarmed(alarms, window, change, change + len(case.after)),
        us_per_sample=seconds / len(stream_rows) * 1e6,
        segments=segment_flags(case, alarms, change),
    )


def segment_flags(
    case: DriftCase, alarms: Sequence[int], change: int
) -> list[tuple[str, int, int]]:
    """Per labelled stretch of the after part: its windows, and how many had an alarm."""
    out, start = [], change
    for label, rows in case.segments:
        out.append(
            (label, rows // case.window, windows_alarmed(alarms, case.window, start, start + rows))
        )
        start += rows
    return out


def real_cases(quick: bool) -> tuple[list[DriftCase], list[str]]:
    """The real datasets whose packages are installed, and a note for each missing one."""
    cases, missing = [], []
    for build, package in ((nile_case, "statsmodels"), (census_case, "nannyml")):
        try:
            cases.append(build(quick=quick))
        except ImportError:
            missing.append(f"{build.__name__}: {package} is not installed")
    return cases, missing


def device_cost(case: DriftCase, batch: int, *, windows: int, repeats: int) -> float:
    """µs per sample of the agent's window scoring, fed ``batch`` rows at a time (the
    best of ``repeats`` runs over ``windows`` windows)."""
    reference = edgefleet_reference(case)
    rows = np.concatenate([case.stable, case.after])[: windows * case.window]
    best = float("inf")
    for _ in range(repeats):
        detector = DriftDetector(reference, DriftThresholds(window=case.window))
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            detector.observe(rows[start : start + batch])
        best = min(best, time.perf_counter() - started)
    return best / len(rows) * 1e6


def real_table(quick: bool) -> tuple[list[DriftCase], list[RealRow], list[str]]:
    """Every installed detector on every installed real dataset, and notes on what is
    missing."""
    cases, missing = real_cases(quick)
    detectors, missing_detectors = available_detectors()
    rows = [
        run_real(case, name, detector) for case in cases for name, detector in detectors.items()
    ]
    return cases, rows, missing + missing_detectors


def print_real(quick: bool) -> list[RealRow]:
    cases, rows, notes = real_table(quick)
    print("Real drift, streamed in natural order" + (" (--quick: fewer rows)" if quick else ""))
    for case in cases:
        print(
            f"- {case.name}: {len(case.reference)} reference rows, {len(case.stable)} stable, "
            f"{len(case.after)} after the change at {case.change}; window {case.window}; "
            f"data: {case.source}"
        )
    for note in notes:
        print(f"- not run: {note}")
    print(
        "| data | detector | false alarms, stable (natural order) | false alarms, stable "
        "(shuffled) | delay after change (samples) | windows flagged after change | "
        "CPU µs/sample |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    for case in cases:
        if not case.segments:
            continue
        print(f"{case.name}, windows flagged after the change by stretch:")
        labels = [label for label, _ in case.segments]
        print("| detector | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        for row in rows:
            if row.dataset == case.name:
                cells = " | ".join(f"{flagged}/{windows}" for _, windows, flagged in row.segments)
                print(f"| {row.detector} | {cells} |")
    census = [case for case in cases if case.window == 500]
    if census:
        case = census[0]
        windows, repeats = (4, 1) if quick else (20, 3)
        costs = ", ".join(
            f"batch {b}: {device_cost(case, b, windows=windows, repeats=repeats):.1f} µs/sample"
            for b in (1, 32)
        )
        print(
            f"Device cost, edgefleet's agent-side window scoring ({len(case.columns)} features, "
            f"window {case.window}): {costs}"
        )
    return rows


def print_synthetic() -> None:
    rng = np.random.default_rng(0)
    print(
        f"window {WINDOW} samples; false alarms over {UNSHIFTED_WINDOWS} unshifted windows; "
        f"delay = samples to first flagged window (none = not within {MAX_DELAY_WINDOWS} windows)"
    )
    header = " | ".join(f"delay @ {d} std" for d in SHIFTS)
    print(f"| data | detector | false-alarm rate | {header} | CPU µs/sample |")
    print("|---|---|---|" + "---|" * len(SHIFTS) + "---|")
    digits = load_digits().data.astype(np.float32)
    cancer = load_breast_cancer().data.astype(np.float32)
    for line in run_dataset("digits (64 px)", digits, rng) + run_dataset(
        "breast cancer (30 tabular)", cancer, rng
    ):
        print(line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the real-data table only, on fewer rows"
    )
    args = parser.parse_args(argv)
    print_real(args.quick)
    if not args.quick:
        print()
        print_synthetic()


if __name__ == "__main__":
    main()
