"""Arm assignment: an exact split, stable and order-independent, shifting only at the edge."""

from __future__ import annotations

from collections import Counter

import pytest

from edgefleet.control_plane.services.experiments.assignment import assign_arms, device_key

DEVICES = [f"dev-unit{i:05d}" for i in range(101)]


def test_half_the_cohort_gets_each_arm() -> None:
    arms = assign_arms(7, DEVICES, 0.5)
    assert Counter(arms.values()) == {"B": 50, "A": 51}  # round(50.5) is 50


def test_assignment_is_stable_and_independent_of_order() -> None:
    assert assign_arms(7, DEVICES, 0.5) == assign_arms(7, list(reversed(DEVICES)), 0.5)


def test_another_experiment_splits_the_same_cohort_differently() -> None:
    assert assign_arms(7, DEVICES, 0.5) != assign_arms(8, DEVICES, 0.5)


def test_a_larger_share_only_moves_devices_from_a_to_b() -> None:
    before = assign_arms(7, DEVICES, 0.5)
    after = assign_arms(7, DEVICES, 0.7)
    moved = {d for d in DEVICES if before[d] != after[d]}
    assert len(moved) == 71 - 50
    assert all(before[d] == "A" and after[d] == "B" for d in moved)


def test_the_key_is_reproducible_from_the_audit_log() -> None:
    import hashlib

    assert device_key(7, "dev-unit00001") == hashlib.sha256(b"7:dev-unit00001").hexdigest()


def test_a_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="within"):
        assign_arms(1, DEVICES, 1.5)
