"""What calibrating the drift thresholds costs at build time.

16 features (12 numeric, two 0/1 flags, two 9-code categoricals) x 2,000 reference
rows, the defaults (window 500, 1 % false alarms per window, 4,000 replicates).

    .venv/bin/python bench/drift_calibration.py
"""

from __future__ import annotations

import time

import numpy as np

from edgefleet.drift import reference_statistics

RUNS = 7


def main() -> None:
    rng = np.random.default_rng(0)
    rows = np.column_stack(
        [
            rng.normal(size=(2000, 12)),
            rng.integers(0, 2, (2000, 2)),
            rng.integers(0, 9, (2000, 2)),
        ]
    )
    seconds = []
    for _ in range(RUNS):
        started = time.perf_counter()
        reference_statistics(rows, input_name="x")
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    print(
        f"reference_statistics, 16 features x 2000 rows: median {seconds[RUNS // 2]:.3f} s, "
        f"min {seconds[0]:.3f} s over {RUNS} runs"
    )


if __name__ == "__main__":
    main()
