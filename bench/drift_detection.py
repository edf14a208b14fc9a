"""How well and how cheaply the device drift detector finds shifts, against scipy's KS.

Data: scikit-learn's bundled digits (64 pixel features) and breast-cancer (30
tabular features). The reference is built exactly as bundles build it (quantile
bins of a representative sample); streams are drawn from disjoint rows.

- False alarms: share of windows flagged over a long unshifted stream.
- Detection delay: samples from the start of a shifted stream to the first flagged
  window, for shifts of known size (every feature moved by delta x its std).
- CPU: seconds per sample of scoring.

The reference implementation runs on the same windows in the same process: a
two-sample Kolmogorov-Smirnov test per feature against the reference sample
(scipy.stats.ks_2samp), with a Bonferroni-corrected alpha of 0.01, flagging a
window when the same share of features as edgefleet's rule rejects.

    .venv/bin/python bench/drift_detection.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from scipy.stats import ks_2samp
from sklearn.datasets import load_breast_cancer, load_digits

from edgefleet.control_plane.services.bundle_builder import reference_statistics
from edgefleet.drift import DEFAULT_SHARE_THRESHOLD, DriftDetector, DriftThresholds, Reference

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


def main() -> None:
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


if __name__ == "__main__":
    main()
