"""The agent's time floor: raised only from signed metadata time, checked before trusting expiry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.agent.errors import InstallError
from edgefleet.agent.verification.timefloor import ALLOWED_SKEW, TimeFloor
from edgefleet.trust import ISSUED_FIELD

SIGNED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def timestamp_file(path: Path, issued: datetime | None) -> Path:
    signed: dict[str, object] = {"_type": "timestamp", "version": 7}
    if issued is not None:
        signed[ISSUED_FIELD] = issued.isoformat()
    path.write_text(json.dumps({"signatures": [], "signed": signed}))
    return path


def floor_at(tmp_path: Path, now: datetime) -> TimeFloor:
    return TimeFloor(tmp_path, clock=lambda: now)


def test_a_device_with_no_floor_accepts_any_clock(tmp_path: Path) -> None:
    floor_at(tmp_path, datetime(1970, 1, 1, tzinfo=UTC)).check()


def test_floor_rises_to_the_signed_signing_time(tmp_path: Path) -> None:
    floor = floor_at(tmp_path, SIGNED_AT)
    floor.raise_to_signed(timestamp_file(tmp_path / "timestamp.json", SIGNED_AT))
    assert floor.read() == SIGNED_AT


def test_clock_set_back_before_the_floor_is_refused_with_both_times(tmp_path: Path) -> None:
    floor_at(tmp_path, SIGNED_AT).raise_to_signed(timestamp_file(tmp_path / "t.json", SIGNED_AT))
    set_back = floor_at(tmp_path, SIGNED_AT - timedelta(days=2))
    with pytest.raises(InstallError) as refused:
        set_back.check()
    assert "before the time floor" in refused.value.reason
    assert "2026-11-21T12:00:00" in refused.value.reason
    assert "2026-11-23T12:00:00" in refused.value.reason


def test_a_clock_lagging_within_the_allowed_skew_is_accepted(tmp_path: Path) -> None:
    floor_at(tmp_path, SIGNED_AT).raise_to_signed(timestamp_file(tmp_path / "t.json", SIGNED_AT))
    floor_at(tmp_path, SIGNED_AT - ALLOWED_SKEW + timedelta(seconds=1)).check()


def test_floor_never_goes_down(tmp_path: Path) -> None:
    floor = floor_at(tmp_path, SIGNED_AT)
    floor.raise_to_signed(timestamp_file(tmp_path / "new.json", SIGNED_AT))
    floor.raise_to_signed(timestamp_file(tmp_path / "old.json", SIGNED_AT - timedelta(days=9)))
    assert floor.read() == SIGNED_AT


def test_a_device_clock_running_ahead_never_raises_the_floor(tmp_path: Path) -> None:
    ahead = floor_at(tmp_path, SIGNED_AT + timedelta(days=365))
    ahead.raise_to_signed(timestamp_file(tmp_path / "t.json", SIGNED_AT))
    assert ahead.read() == SIGNED_AT
    floor_at(tmp_path, SIGNED_AT).check()  # once corrected, the clock is accepted


def test_metadata_without_a_signed_time_leaves_the_floor_alone(tmp_path: Path) -> None:
    floor = floor_at(tmp_path, SIGNED_AT)
    floor.raise_to_signed(timestamp_file(tmp_path / "t.json", None))
    assert floor.read() is None


def test_a_damaged_floor_file_does_not_block_updates(tmp_path: Path) -> None:
    (tmp_path / "time_floor.json").write_text("{not json")
    floor = floor_at(tmp_path, SIGNED_AT)
    floor.check()
    floor.raise_to_signed(timestamp_file(tmp_path / "t.json", SIGNED_AT))
    assert floor.read() == SIGNED_AT
