"""The fleet-level drift rule: hysteresis per device, then a quorum across the fleet.

One noisy window or one noisy device must trigger nothing. A device enters the
drifted state after ``enter`` consecutive drifted windows and leaves it after
``leave`` consecutive clean ones; the fleet (one model version within one cohort)
fires when at least ``min_devices`` devices, and at least ``device_share`` of the
devices that reported enough windows, are in the drifted state.

``expected_windows_between_alarms`` turns a per-window false-alarm rate (the one the
reference statistics are calibrated for, see ``edgefleet.drift``) into the expected
number of windows between fleet alarms on unshifted data; docs/drift.md derives it and
works an example with these defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DriftRule:
    enter: int = 3
    leave: int = 3
    min_devices: int = 2
    device_share: float = 0.3


def device_drifted(windows: Sequence[bool], rule: DriftRule) -> bool:
    """Replay a device's windows (oldest first) through the hysteresis; its final state."""
    drifted = False
    run = 0
    for window in windows:
        if window != drifted:
            run += 1
            if run >= (rule.enter if not drifted else rule.leave):
                drifted = not drifted
                run = 0
        else:
            run = 0
    return drifted


@dataclass
class CohortVerdict:
    cohort: str
    model: str
    model_version: str
    devices_reporting: int
    devices_drifted: list[str] = field(default_factory=list)
    fires: bool = False

    @property
    def share(self) -> float:
        return len(self.devices_drifted) / self.devices_reporting if self.devices_reporting else 0.0


def evaluate_cohort(
    *,
    cohort: str,
    model: str,
    model_version: str,
    windows_by_device: Mapping[str, Iterable[bool]],
    rule: DriftRule,
) -> CohortVerdict:
    """Apply the rule to one cohort's devices (each device's windows oldest first)."""
    verdict = CohortVerdict(
        cohort=cohort, model=model, model_version=model_version, devices_reporting=0
    )
    for device_id, windows in sorted(windows_by_device.items()):
        history = list(windows)
        if len(history) < rule.enter:
            continue
        verdict.devices_reporting += 1
        if device_drifted(history, rule):
            verdict.devices_drifted.append(device_id)
    verdict.fires = (
        len(verdict.devices_drifted) >= rule.min_devices and verdict.share >= rule.device_share
    )
    return verdict


def required_devices(rule: DriftRule, devices: int) -> int:
    """Devices that must be drifted for a cohort of ``devices`` reporting ones to fire."""
    return max(rule.min_devices, math.ceil(rule.device_share * devices))


def expected_windows_between_alarms(p: float, rule: DriftRule, devices: int) -> float:
    """Expected windows (per device) between fleet alarms when every window of every
    device flags independently with probability ``p`` (no real drift).

    A device enters the drifted state at a rate ``r = (1 - p) p^enter`` per window and
    stays ``d = ((1 - p)^-leave - 1) / p`` windows on average (until ``leave`` clean
    windows in a row), so it is drifted a share ``pi = r d / (1 + r d)`` of the time. An
    alarm starts when a device enters while exactly ``m - 1`` others are drifted, ``m``
    being ``required_devices``: the rate is ``n r (1 - pi) C(n-1, m-1) pi^(m-1)
    (1 - pi)^(n-m)``, and the expected time between alarms its inverse.

    Returns:
        Windows between alarms; ``math.inf`` when the fleet can never fire (fewer
        devices than ``m``, or ``p`` = 0).
    """
    needed = required_devices(rule, devices)
    if needed > devices or p <= 0.0:
        return math.inf
    if p >= 1.0:
        return 1.0
    enter_rate = (1 - p) * p**rule.enter
    dwell = ((1 - p) ** -rule.leave - 1) / p
    drifted = enter_rate * dwell / (1 + enter_rate * dwell)
    others = math.comb(devices - 1, needed - 1) * drifted ** (needed - 1)
    others *= (1 - drifted) ** (devices - needed)
    rate = devices * enter_rate * (1 - drifted) * others
    return math.inf if rate == 0 else 1.0 / rate
