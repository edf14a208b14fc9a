"""Maintenance windows: when a device may switch to a new model, as cron in its time zone.

A window is a five-field cron expression saying when it opens (minute, hour, day of
month, month, day of week), how long it stays open, and the IANA time zone the cron is
read in (``zoneinfo``, stdlib)::

    {"cron": "0 2 * * *", "duration_s": 7200, "tz": "Europe/Berlin"}

opens at 02:00 Berlin time every day, for two hours. The control plane sets it as a
rollout option and sends it inside the ``BundleOffer``; the agent stages and
smoke-tests at any time but switches only while a window is open
(``edgefleet.agent.install.deferral``).

The cron dialect is a subset of Vixie cron, parsed here rather than by a library
because the agent must stay light (APScheduler, which the control plane schedules
with, is not allowed in the agent process; croniter is in maintenance mode; cronsim
would be one more dependency on every device for forty lines). Each field is ``*``,
a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list of those.
Names (``MON``, ``JAN``), ``L``, ``W``, ``#`` and ``@daily`` are refused with
``WindowError`` naming the field. Day of week runs 0-7 with both 0 and 7 Sunday; when
both day of month and day of week are restricted, a day matching either matches (as in
Vixie cron). Times are wall-clock times in ``tz``: a window opening at 02:30 on a
spring-forward night, when 02:30 does not exist, opens at the first minute that does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from msgspec import Meta

from edgefleet import schema
from edgefleet.errors import WindowError

MAX_DURATION_S = 7 * 86_400
"""Longest window: a week (a window that is always open is no window)."""
SEARCH_DAYS = 4 * 366 + 1
"""How far ahead ``next_open`` looks: four years and a day, so a window opening only on
29 February is found; a cron matching no day in that span (``0 0 31 2 *``) never fires."""

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))  # fmt: skip


class MaintenanceWindow(schema.Open, frozen=True, kw_only=True):
    """When a device may switch: opens at each ``cron`` match in ``tz``, for ``duration_s``."""

    cron: Annotated[str, Meta(max_length=200)]
    duration_s: Annotated[float, Meta(gt=0, le=MAX_DURATION_S)]
    tz: Annotated[str, Meta(max_length=64)] = "UTC"


class CronSpec:
    """A parsed five-field cron expression: the sets of values each field matches."""

    def __init__(self, expression: str) -> None:
        parts = expression.split()
        if len(parts) != 5:
            raise WindowError(f"cron {expression!r}: expected 5 fields, got {len(parts)}")
        values = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        self.expression = expression
        self.minutes, self.hours, self.days, self.months, weekdays = values
        self.weekdays = {d % 7 for d in weekdays}  # 7 is Sunday too
        self.any_day = parts[2] == "*"
        self.any_weekday = parts[4] == "*"

    def matches_day(self, day: date) -> bool:
        """Whether the cron fires on ``day`` (at one of its hours and minutes)."""
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays  # cron: Sunday is 0
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def starts_on(self, day: date, zone: ZoneInfo) -> Iterator[datetime]:
        """The moments (aware, in ``zone``) the cron fires on ``day``, in order."""
        if not self.matches_day(day):
            return
        for hour in sorted(self.hours):
            for minute in sorted(self.minutes):
                yield _resolve(datetime(day.year, day.month, day.day, hour, minute), zone)


def _parse_field(text: str, name: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                first, _, last = body.partition("-")
                start, end = int(first), int(last)
            else:
                start = end = int(body)
                if step_text:
                    end = high
        except ValueError:
            raise WindowError(f"cron {name} {text!r}: not a number, range or step") from None
        if step < 1 or not low <= start <= end <= high:
            raise WindowError(f"cron {name} {text!r}: outside {low}-{high} or a bad step")
        values.update(range(start, end + 1, step))
    return values


def _resolve(naive: datetime, zone: ZoneInfo) -> datetime:
    """``naive`` wall-clock time in ``zone``; a time skipped by a clock change moves on
    to the first minute that exists (ambiguous times take their first occurrence)."""
    moment = naive.replace(tzinfo=zone)
    while moment.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != moment.replace(
        tzinfo=None
    ):
        naive += timedelta(minutes=1)
        moment = naive.replace(tzinfo=zone)
    return moment


def zone_of(window: MaintenanceWindow) -> ZoneInfo:
    """The window's time zone; ``WindowError`` if the device does not know it."""
    try:
        return ZoneInfo(window.tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise WindowError(f"unknown time zone {window.tz!r}") from e


def check_window(window: MaintenanceWindow) -> None:
    """Refuse a window that cannot be read or never opens (``WindowError``)."""
    spec = CronSpec(window.cron)
    zone = zone_of(window)
    if next_open(window, datetime(2000, 1, 1, tzinfo=UTC), spec=spec, zone=zone) is None:
        raise WindowError(f"cron {window.cron!r} never fires")


def _starts_between(spec: CronSpec, zone: ZoneInfo, first: date, days: int) -> Iterator[datetime]:
    for offset in range(days):
        yield from spec.starts_on(first + timedelta(days=offset), zone)


def open_until(
    window: MaintenanceWindow,
    now: datetime,
    *,
    spec: CronSpec | None = None,
    zone: ZoneInfo | None = None,
) -> datetime | None:
    """When the window open at ``now`` (aware) closes; None when it is closed at ``now``.

    Every opening lasts as long, so only the latest one at or before ``now`` can still
    be open: the search walks back from ``now`` and stops at the first start it finds.
    """
    spec = spec or CronSpec(window.cron)
    zone = zone or zone_of(window)
    span = timedelta(seconds=window.duration_s)
    today = now.astimezone(zone).date()
    for offset in range(int(window.duration_s // 86_400) + 2):
        day = today - timedelta(days=offset)
        latest = max((s for s in spec.starts_on(day, zone) if s <= now), default=None)
        if latest is not None:
            return latest + span if now < latest + span else None
    return None


def next_open(
    window: MaintenanceWindow,
    now: datetime,
    *,
    spec: CronSpec | None = None,
    zone: ZoneInfo | None = None,
) -> datetime | None:
    """The first moment after ``now`` (aware) that the window opens, in its time zone;
    None when the cron never fires within ``SEARCH_DAYS``."""
    spec = spec or CronSpec(window.cron)
    zone = zone or zone_of(window)
    for start in _starts_between(spec, zone, now.astimezone(zone).date(), SEARCH_DAYS):
        if start > now:
            return start
    return None
