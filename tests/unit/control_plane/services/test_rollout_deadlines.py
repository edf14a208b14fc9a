"""The deadline rules, on a database in memory and a clock the test sets: no broker, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlmodel import Session, SQLModel, create_engine, select

from edgefleet.control_plane.core.tables import (
    AuditEntry,
    Bundle,
    Device,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    utcnow,
)
from edgefleet.control_plane.services.rollouts.deadlines import (
    arm_deadlines,
    aware,
    enforce_deadlines,
    overdue,
    pause_clock,
    resume_clock,
)
from edgefleet.control_plane.services.rollouts.lifecycle import retry_devices
from edgefleet.control_plane.services.rollouts.outbox import bundle_offer
from edgefleet.control_plane.services.rollouts.reports import reoffer_on_reconnect
from edgefleet.maintenance import MaintenanceWindow
from edgefleet.messages import BundleOffer, DeviceCommand

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _rollout(session: Session, devices: dict[str, bool], **options: float) -> Rollout:
    """An in-progress one-wave rollout offered at T0 to ``devices`` (id -> online)."""
    session.add(
        Bundle(id="b-2", model="m", model_version="2", profile="p", release=2, target="b-2.tar",
               sha256="0" * 64, length=1, path="/nonexistent")
    )  # fmt: skip
    rollout = Rollout(bundle_id="b-2", state="in_progress", wave_sizes=[len(devices)], **options)
    rollout.wave_deadline_at = at(rollout.wave_timeout_s)
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    for device_id, online in devices.items():
        session.add(Device(id=device_id, online=online))
        row = RolloutDevice(rollout_id=rollout.id, device_id=device_id, state="downloading")
        arm_deadlines(row, rollout, T0, rollout.wave_deadline_at)
        session.add(row)
    session.commit()
    return rollout


def _row(session: Session, rollout: Rollout, device_id: str) -> RolloutDevice:
    row = session.get(RolloutDevice, (rollout.id, device_id))
    assert row is not None
    return row


def test_offline_time_moves_the_install_deadline_on() -> None:
    rollout = Rollout(bundle_id="b", install_timeout_s=60, wave_timeout_s=3600)
    row = RolloutDevice(rollout_id=1, device_id="d")
    arm_deadlines(row, rollout, T0, at(3600))
    pause_clock(row, at(10))
    pause_clock(row, at(20))  # already paused: the pause still counts from 10 s
    resume_clock(row, at(110))
    assert row.deadline_at == at(160) and row.paused_at is None
    assert overdue(row, rollout, at(159)) is None
    assert "install deadline passed (60 s" in str(overdue(row, rollout, at(160)))


def test_the_wave_deadline_caps_a_clock_paused_for_long() -> None:
    rollout = Rollout(bundle_id="b", install_timeout_s=60, wave_timeout_s=100)
    row = RolloutDevice(rollout_id=1, device_id="d", wave=0)
    arm_deadlines(row, rollout, T0, at(100))
    pause_clock(row, at(30))
    resume_clock(row, at(90))  # 30 s of install time left, but the wave ends at 100 s
    assert overdue(row, rollout, at(99)) is None
    assert overdue(row, rollout, at(100)) == "wave 1 deadline passed (100 s)"


def test_online_device_past_its_deadline_times_out_with_its_last_state(
    session: Session,
) -> None:
    rollout = _rollout(session, {"on": True, "off": False}, install_timeout_s=60)
    assert enforce_deadlines(session=session, rollout=rollout, now=at(59), actor="t") == []
    timed_out = enforce_deadlines(session=session, rollout=rollout, now=at(60), actor="t")
    session.commit()

    assert [r.device_id for r in timed_out] == ["on"]
    on = _row(session, rollout, "on")
    assert (on.state, on.timed_out_in) == ("timed_out", "downloading")
    assert on.reason == "install deadline passed (60 s online since the offer) in downloading"
    off = _row(session, rollout, "off")
    assert off.state == "downloading"  # offline: never timed out, its clock stands still
    assert off.paused_at is not None and aware(off.paused_at) == at(59)


def test_offline_device_is_not_timed_out_even_past_the_wave_deadline(session: Session) -> None:
    rollout = _rollout(session, {"off": False}, install_timeout_s=60, wave_timeout_s=120)
    assert enforce_deadlines(session=session, rollout=rollout, now=at(1000), actor="t") == []
    device = session.get(Device, "off")
    assert device is not None
    device.online = True  # back, but its wave's deadline has passed
    session.add(device)
    (row,) = enforce_deadlines(session=session, rollout=rollout, now=at(1001), actor="t")
    assert row.reason == "wave 1 deadline passed (120 s) in downloading"


def test_retry_offers_failed_and_timed_out_devices_with_fresh_deadlines(
    session: Session,
) -> None:
    rollout = _rollout(session, {"a": True, "b": True, "c": True}, install_timeout_s=60)
    enforce_deadlines(session=session, rollout=rollout, now=at(60), actor="t")
    _row(session, rollout, "b").state = "failed"
    _row(session, rollout, "c").state = "active"
    rollout.phase = "soaking"
    session.commit()

    outbox, retried = retry_devices(session=session, rollout=rollout, now=at(500))
    assert [device_id for device_id, _offer in outbox] == ["a", "b"]
    assert retried == {"a": "timed_out (downloading)", "b": "failed"}
    a = _row(session, rollout, "a")
    assert (a.state, a.timed_out_in) == ("offered", None)
    assert a.deadline_at == at(560) and a.wave_deadline_at == at(500 + rollout.wave_timeout_s)
    assert rollout.phase == "installing"  # the wave is judged again, with them
    assert _row(session, rollout, "c").state == "active"


class _Publisher:
    def __init__(self) -> None:
        self.offers: list[str] = []

    def publish_offer(self, device_id: str, offer: BundleOffer) -> None:
        self.offers.append(device_id)

    def publish_command(self, device_id: str, command: DeviceCommand) -> None:
        raise AssertionError("no command expected")


def test_device_back_within_its_wave_deadline_is_offered_again_with_its_remaining_time(
    session: Session,
) -> None:
    rollout = _rollout(session, {"d": False}, install_timeout_s=600, wave_timeout_s=3600)
    row = _row(session, rollout, "d")
    now = utcnow()
    row.deadline_at = now + timedelta(seconds=100)
    row.wave_deadline_at = now + timedelta(seconds=3600)
    row.paused_at = now - timedelta(seconds=50)  # away for 50 s
    session.commit()
    publisher = _Publisher()

    assert reoffer_on_reconnect(session=session, publisher=publisher, device_id="d") == 1
    row = _row(session, rollout, "d")
    assert publisher.offers == ["d"] and row.state == "downloading" and row.paused_at is None
    assert row.deadline_at is not None
    assert 149 <= (aware(row.deadline_at) - now).total_seconds() <= 155


def test_device_back_after_its_wave_deadline_is_timed_out_not_offered(session: Session) -> None:
    rollout = _rollout(session, {"d": False}, install_timeout_s=600, wave_timeout_s=60)
    row = _row(session, rollout, "d")
    row.wave_deadline_at = utcnow() - timedelta(seconds=1)
    row.paused_at = utcnow() - timedelta(seconds=120)
    session.commit()
    publisher = _Publisher()

    assert reoffer_on_reconnect(session=session, publisher=publisher, device_id="d") == 0
    row = _row(session, rollout, "d")
    assert publisher.offers == []
    assert (row.state, row.timed_out_in) == ("timed_out", "downloading")
    (entry,) = session.exec(select(AuditEntry).where(AuditEntry.action == "rollout.timeout"))
    assert entry.actor == "device:d" and entry.detail["devices"] == {"d": "downloading"}


def test_a_deferred_device_keeps_counting_against_its_deadline(session: Session) -> None:
    window = {"cron": "0 2 * * *", "duration_s": 3600.0, "tz": "Europe/Berlin"}
    rollout = _rollout(session, {"d": True}, install_timeout_s=60)
    rollout.maintenance_window = window
    row = _row(session, rollout, "d")
    row.state, row.reason = "deferred", "update lock held by robot-arm"
    session.commit()

    assert enforce_deadlines(session=session, rollout=rollout, now=at(59), actor="t") == []
    (late,) = enforce_deadlines(session=session, rollout=rollout, now=at(60), actor="t")
    assert (late.state, late.timed_out_in) == ("timed_out", "deferred")
    assert late.reason == "install deadline passed (60 s online since the offer) in deferred"


def test_the_offer_carries_the_rollouts_maintenance_window(session: Session) -> None:
    rollout = _rollout(session, {"d": True})
    bundle = session.get(Bundle, "b-2")
    assert bundle is not None
    assert bundle_offer(bundle, rollout).maintenance_window is None
    rollout.maintenance_window = {"cron": "0 2 * * *", "duration_s": 3600.0, "tz": "UTC"}
    assert bundle_offer(bundle, rollout).maintenance_window == MaintenanceWindow(
        cron="0 2 * * *", duration_s=3600, tz="UTC"
    )


@pytest.mark.parametrize(
    ("window", "why"),
    [
        ({"cron": "0 2 * *", "duration_s": 60}, "5 fields"),
        ({"cron": "0 2 * * *", "duration_s": 60, "tz": "Nowhere/Else"}, "time zone"),
        ({"cron": "0 2 * * *", "duration_s": 0}, "greater than 0"),
    ],
)
def test_a_window_no_device_could_read_is_refused_at_creation(
    window: dict[str, object], why: str
) -> None:
    with pytest.raises(ValidationError, match=why):
        RolloutCreate(bundle_id="b", maintenance_window=window)  # type: ignore[arg-type]
