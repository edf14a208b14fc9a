"""The expected time between fleet alarms matches a simulated fleet of noisy devices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgefleet.control_plane.drift.rule import (
    DriftRule,
    expected_windows_between_alarms,
    required_devices,
)

RULE = DriftRule()


def simulated_windows_between_alarms(
    p: float, rule: DriftRule, devices: int, windows: int
) -> float:
    """Replay the hysteresis for every device window by window and count alarm onsets."""
    rng = np.random.default_rng(0)
    flags = rng.random((windows, devices)) < p
    drifted = np.zeros(devices, dtype=bool)
    run = np.zeros(devices, dtype=np.int64)
    needed = required_devices(rule, devices)
    firing = False
    onsets = 0
    for row in flags:
        against = row != drifted
        run = np.where(against, run + 1, 0)
        switch = against & (run >= np.where(drifted, rule.leave, rule.enter))
        drifted ^= switch
        run[switch] = 0
        now = drifted.sum() >= needed
        onsets += now and not firing
        firing = bool(now)
    return windows / max(onsets, 1)


@pytest.mark.parametrize(("p", "devices"), [(0.3, 6), (0.4, 10), (0.25, 3)])
def test_formula_matches_simulation(p: float, devices: int) -> None:
    expected = expected_windows_between_alarms(p, RULE, devices)
    simulated = simulated_windows_between_alarms(p, RULE, devices, windows=60_000)
    assert simulated == pytest.approx(expected, rel=0.3)


def test_worked_example_of_docs_drift_md() -> None:
    # 10 devices at the calibrated 1 % per window: an alarm about every 3e14 windows.
    assert required_devices(RULE, 10) == 3
    windows = expected_windows_between_alarms(0.01, RULE, 10)
    assert 1e14 < windows < 1e15
    assert expected_windows_between_alarms(0.01, RULE, 1) == math.inf
