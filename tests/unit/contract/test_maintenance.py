"""Maintenance windows: the cron subset, time zones, clock changes, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from edgefleet.errors import WindowError
from edgefleet.maintenance import CronSpec, MaintenanceWindow, check_window, next_open, open_until
from edgefleet.messages import BundleOffer, decode_as

BERLIN = ZoneInfo("Europe/Berlin")


def window(cron: str, duration_s: float = 7200, tz: str = "Europe/Berlin") -> MaintenanceWindow:
    return MaintenanceWindow(cron=cron, duration_s=duration_s, tz=tz)


def test_a_nightly_window_opens_at_two_in_the_devices_zone_for_its_duration() -> None:
    nightly = window("0 2 * * *")
    evening = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)  # 23:00 in Berlin
    assert open_until(nightly, evening) is None
    assert next_open(nightly, evening) == datetime(2026, 12, 8, 2, 0, tzinfo=BERLIN)
    inside = datetime(2026, 12, 8, 2, 30, tzinfo=BERLIN)
    assert open_until(nightly, inside) == datetime(2026, 12, 8, 4, 0, tzinfo=BERLIN)
    assert open_until(nightly, datetime(2026, 12, 8, 4, 0, tzinfo=BERLIN)) is None  # closed


def test_a_window_open_across_midnight_is_found_from_the_day_before() -> None:
    late = window("30 23 * * *", duration_s=3 * 3600)
    assert open_until(late, datetime(2026, 6, 2, 1, 0, tzinfo=BERLIN)) == datetime(
        2026, 6, 2, 2, 30, tzinfo=BERLIN
    )


def test_lists_ranges_steps_and_weekdays() -> None:
    spec = CronSpec("0,30 1-3 * * 1-5")
    assert spec.minutes == {0, 30} and spec.hours == {1, 2, 3} and spec.weekdays == {1, 2, 3, 4, 5}
    assert CronSpec("*/15 * * * *").minutes == {0, 15, 30, 45}
    assert CronSpec("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    saturday = datetime(2026, 12, 12, 12, 0, tzinfo=UTC)
    assert next_open(window("0 3 * * 1-5", tz="UTC"), saturday) == datetime(
        2026, 12, 14, 3, 0, tzinfo=UTC
    )


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    spec = CronSpec("0 0 13 * 5")  # the 13th, or any Friday (Vixie cron)
    assert spec.matches_day(datetime(2026, 12, 13).date())  # a Sunday, the 13th
    assert spec.matches_day(datetime(2026, 12, 11).date())  # a Friday
    assert not spec.matches_day(datetime(2026, 12, 10).date())


def test_a_start_skipped_by_spring_forward_opens_at_the_first_minute_that_exists() -> None:
    night = window("30 2 * * *", duration_s=600)
    opens = next_open(night, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert opens == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert opens is not None and opens.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("cron", "tz", "why"),
    [
        ("0 2 * *", "UTC", "5 fields"),
        ("60 2 * * *", "UTC", "minute"),
        ("0 2 * * MON", "UTC", "day of week"),
        ("@daily", "UTC", "5 fields"),
        ("*/0 * * * *", "UTC", "minute"),
        ("0 0 31 2 *", "UTC", "never fires"),
        ("0 2 * * *", "Mars/Olympus_Mons", "time zone"),
    ],
)
def test_what_the_dialect_refuses_names_the_field(cron: str, tz: str, why: str) -> None:
    with pytest.raises(WindowError, match=why):
        check_window(window(cron, tz=tz))


def test_the_window_travels_in_the_offer_and_old_offers_have_none() -> None:
    offer = BundleOffer(
        bundle_id="b-1", target="b-1.tar", release=1, maintenance_window=window("0 2 * * *")
    )
    assert decode_as(offer.to_bytes(), BundleOffer).maintenance_window == window("0 2 * * *")
    plain = BundleOffer(bundle_id="b-1", target="b-1.tar", release=1)
    assert decode_as(plain.to_bytes(), BundleOffer).maintenance_window is None
