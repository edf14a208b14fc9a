"""The remote-configuration schema both sides check with, and the merge of the scopes."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edgefleet.device_config import (
    MAX_KEYS,
    check_value,
    device_layers,
    diff,
    flags_of,
    merge,
    validate,
)
from edgefleet.errors import FieldError


def test_device_values_override_groups_which_override_the_fleet() -> None:
    effective = merge(
        device_layers(
            {"telemetry.window_s": 10, "logs.level": "INFO", "flags.a": 1},
            {"zeta": {"logs.level": "ERROR"}, "alpha": {"logs.level": "DEBUG", "flags.a": 2}},
            {"flags.a": 3},
        )
    )
    assert effective.values == {"flags.a": 3, "logs.level": "ERROR", "telemetry.window_s": 10.0}
    assert effective.sources == {
        "flags.a": "device",
        "logs.level": "group:zeta",  # groups by name: the later name wins
        "telemetry.window_s": "fleet",
    }


def test_a_stored_value_that_no_longer_checks_is_left_out_of_the_merge() -> None:
    effective = merge(device_layers({"drift.window": 10}, {}, {"unknown.key": 1}))
    assert effective.values == {} and effective.sources == {}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("telemetry.window_s", "30", "expected a number, got a string"),
        ("telemetry.window_s", True, "expected a number, got a boolean"),
        ("telemetry.window_s", math.nan, "must be a finite number"),
        ("telemetry.window_s", 0.5, "must be at least 1"),
        ("drift.window", 500.5, "expected an integer"),
        ("drift.sample_size", 501, "must be at most 500"),
        ("logs.level", "LOUD", "must be one of DEBUG, INFO, WARNING, ERROR"),
        ("logs.level", None, "expected a string, got null"),
        ("telemetry.windows", 5, "unknown key"),
        ("flags.Bad Name", True, "a flag name must match"),
        ("flags.x", {"nested": [1]}, "a flag is a boolean, a number or a string, got dict"),
        ("flags.x", "y" * 1025, "at most 1024 characters"),
        ("flags.x", math.inf, "must be a finite number"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_and_why(key: str, value: Any, reason: str) -> None:
    with pytest.raises(FieldError) as caught:
        check_value(key, value)
    assert reason in caught.value.reason
    assert caught.value.field == key[:80]


def test_values_are_kept_as_their_key_holds_them() -> None:
    assert check_value("telemetry.window_s", 30) == 30.0
    assert isinstance(check_value("telemetry.window_s", 30), float)
    assert check_value("drift.window", 600.0) == 600 and isinstance(
        check_value("drift.window", 600.0), int
    )
    assert check_value("flags.dark-mode", True) is True
    assert check_value("flags.ratio", 0.25) == 0.25


def test_validate_refuses_each_bad_key_alone_and_keeps_the_good_ones() -> None:
    accepted, refused = validate(
        {"logs.level": "DEBUG", "drift.sample_size": -1, "flags.on": False, "nope": 1}
    )
    assert accepted == {"logs.level": "DEBUG", "flags.on": False}
    assert set(refused) == {"drift.sample_size", "nope"}
    assert "at least 0" in refused["drift.sample_size"]


def test_validate_refuses_keys_beyond_the_bound() -> None:
    values = {f"flags.f{i}": i for i in range(MAX_KEYS + 5)}
    accepted, refused = validate(values)
    assert len(accepted) == MAX_KEYS and len(refused) == 5
    assert all(reason == f"more than {MAX_KEYS} keys" for reason in refused.values())


def test_diff_tells_true_from_one_and_names_missing_keys() -> None:
    assert diff({"flags.a": True, "flags.b": 1.0}, {"flags.a": 1, "flags.b": 1}) == {
        "flags.a": (True, 1)
    }
    assert diff({"logs.level": "INFO"}, {}) == {"logs.level": ("INFO", None)}
    assert diff({}, {"flags.z": "x"}) == {"flags.z": (None, "x")}


def test_flags_are_named_without_their_prefix() -> None:
    assert flags_of({"flags.a": 1, "logs.level": "INFO"}) == {"a": 1}
