"""Fleet drift rule: one noisy window or one noisy device triggers nothing."""

from __future__ import annotations

from edgefleet.control_plane.drift.rule import DriftRule, device_drifted, evaluate_cohort

RULE = DriftRule(enter=3, leave=3, min_devices=2, device_share=0.3)
T, F = True, False


def test_device_enters_drift_only_after_consecutive_drifted_windows() -> None:
    assert not device_drifted([T, F, T, F, T, T], RULE)
    assert device_drifted([F, T, T, T], RULE)


def test_device_leaves_drift_only_after_consecutive_clean_windows() -> None:
    assert device_drifted([T, T, T, F, F, T, F], RULE)
    assert not device_drifted([T, T, T, F, F, F], RULE)


def test_one_noisy_device_does_not_fire_the_fleet() -> None:
    verdict = evaluate_cohort(
        cohort="x86",
        model="digits",
        model_version="1",
        windows_by_device={
            "dev-a0000001": [T, T, T, T],
            "dev-a0000002": [F, F, F],
            "dev-a0000003": [F, F, F],
        },
        rule=RULE,
    )
    assert verdict.devices_drifted == ["dev-a0000001"]
    assert not verdict.fires


def test_quorum_of_drifted_devices_fires() -> None:
    windows = {f"dev-b000000{i}": [T, T, T] for i in range(3)} | {
        f"dev-c000000{i}": [F, F, F] for i in range(4)
    }
    verdict = evaluate_cohort(
        cohort="x86", model="digits", model_version="1", windows_by_device=windows, rule=RULE
    )
    assert verdict.fires
    assert verdict.devices_reporting == 7
    assert round(verdict.share, 2) == 0.43


def test_devices_with_too_few_windows_do_not_count() -> None:
    verdict = evaluate_cohort(
        cohort="x86",
        model="digits",
        model_version="1",
        windows_by_device={"dev-d0000001": [T, T], "dev-d0000002": [T, T]},
        rule=RULE,
    )
    assert verdict.devices_reporting == 0
    assert not verdict.fires
