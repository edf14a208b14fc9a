"""The fleet-level drift rule: hysteresis per device, then a quorum across the fleet.

One noisy window or one noisy device must trigger nothing. A device enters the
drifted state after ``enter`` consecutive drifted windows and leaves it after
``leave`` consecutive clean ones; the fleet (one model version within one cohort)
fires when at least ``min_devices`` devices, and at least ``device_share`` of the
devices that reported enough windows, are in the drifted state.
"""

from __future__ import annotations

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
