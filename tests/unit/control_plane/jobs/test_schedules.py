"""Cron retraining follows the policies; silent devices are flagged stale."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from pydantic import ValidationError
from sqlmodel import Session, SQLModel, create_engine, select

from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    ModelPolicy,
    ModelPolicyUpdate,
    RetrainingRequest,
    utcnow,
)
from edgefleet.control_plane.drift.loop import INTERVAL_S as DRIFT_LOOP_INTERVAL_S
from edgefleet.control_plane.jobs.scheduler import build_scheduler
from edgefleet.control_plane.jobs.schedules import (
    CRON_JOB_PREFIX,
    request_scheduled_retraining,
    sync_cron_jobs,
)
from edgefleet.control_plane.services.devices import mark_stale_devices


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'cp.db'}")
    SQLModel.metadata.create_all(engine)
    return engine


def add_bundle(session: Session, version: str, release: int) -> None:
    session.add(
        Bundle(
            id=f"digits-{version}-p-r{release}",
            model="digits",
            model_version=version,
            profile="x86-64-gateway-onnx",
            release=release,
            target="t",
            sha256="0" * 64,
            length=1,
            path="p",
        )
    )
    session.commit()


def test_policy_cron_becomes_a_job_and_disappears_when_removed(engine) -> None:  # type: ignore[no-untyped-def]
    scheduler = BackgroundScheduler(timezone="UTC")
    with Session(engine) as session:
        session.add(ModelPolicy(model="digits", retrain="approval", retrain_cron="0 3 * * *"))
        session.commit()
    sync_cron_jobs(scheduler, engine)
    job = scheduler.get_job(CRON_JOB_PREFIX + "digits")
    assert job is not None and "hour='3'" in str(job.trigger)
    with Session(engine) as session:
        policy = session.get(ModelPolicy, "digits")
        assert policy is not None
        policy.retrain_cron = None
        session.add(policy)
        session.commit()
    sync_cron_jobs(scheduler, engine)
    assert scheduler.get_job(CRON_JOB_PREFIX + "digits") is None


def test_cron_tick_requests_retraining_of_the_newest_built_version_once(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        add_bundle(session, "1", 1)
        add_bundle(session, "2", 2)
    request_scheduled_retraining(engine, "digits")
    request_scheduled_retraining(engine, "digits")  # one is still open: no second
    with Session(engine) as session:
        (request,) = session.exec(select(RetrainingRequest)).all()
    assert (request.trigger, request.from_version, request.state) == (
        "schedule",
        "2",
        "pending_approval",
    )


def test_invalid_crontab_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="retrain_cron"):
        ModelPolicyUpdate(retrain_cron="every tuesday")


def test_online_device_silent_too_long_is_flagged_stale(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        session.add(
            Device(id="dev-quiet0001", online=True, last_seen=utcnow() - timedelta(hours=1))
        )
        session.add(Device(id="dev-fresh0001", online=True, last_seen=utcnow()))
        session.add(
            Device(id="dev-gone00001", online=False, last_seen=utcnow() - timedelta(days=1))
        )
        session.commit()
        assert mark_stale_devices(session=session, silent_for=timedelta(minutes=15)) == [
            "dev-quiet0001"
        ]
        assert mark_stale_devices(session=session, silent_for=timedelta(minutes=15)) == []


class _Ticker:
    def tick(self) -> None:
        pass


def test_scheduler_holds_every_periodic_job_with_its_interval(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path / "cp", stale_after_s=120, rollout_tick_s=2.0)
    scheduler = build_scheduler(
        settings=settings,
        engine=engine,
        repository=None,  # type: ignore[arg-type]  # only handed to the hourly job
        drift_loop=_Ticker(),
        orchestrator=_Ticker(),
    )
    intervals = {job.id: job.trigger.interval for job in scheduler.get_jobs()}
    assert intervals == {
        "refresh-timestamp": timedelta(hours=1),
        "drift-loop": timedelta(seconds=DRIFT_LOOP_INTERVAL_S),
        "cron-sync": timedelta(seconds=60),
        "stale-devices": timedelta(seconds=60),
        "event-store": timedelta(hours=1),
        "rollout-orchestrator": timedelta(seconds=2),
    }
    assert scheduler.get_job("stale-devices").args[1] == timedelta(seconds=120)
    for single in ("drift-loop", "rollout-orchestrator"):
        job = scheduler.get_job(single)
        assert (job.max_instances, job.coalesce) == (1, True)
