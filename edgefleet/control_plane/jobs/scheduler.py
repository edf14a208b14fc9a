"""Every periodic job of the control plane, registered in one place.

The control plane does its background work on one APScheduler
``BackgroundScheduler``; this module is the only one that adds standing jobs to it,
so the table in :func:`build_scheduler` is the whole list of what runs on its own.
(The cron-sync job adds and removes per-model retraining jobs at run time; see
:mod:`edgefleet.control_plane.jobs.schedules`.)

Every job is durable by design: the state it works on lives in the database or the
signed repository, so a restarted control plane picks up where it stopped, and each
job function catches broadly at its top so one failed pass never stops the next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine

from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.drift.loop import INTERVAL_S as DRIFT_LOOP_INTERVAL_S
from edgefleet.control_plane.jobs.event_store import INTERVAL_S as EVENT_STORE_INTERVAL_S
from edgefleet.control_plane.jobs.event_store import upkeep_event_store
from edgefleet.control_plane.jobs.schedules import detect_stale_devices, sync_cron_jobs
from edgefleet.control_plane.trust.repository import SignedRepository

__all__ = ["Ticking", "build_scheduler", "refresh_metadata"]

logger = logging.getLogger(__name__)


class Ticking(Protocol):
    """A worker advanced by one pass at a time (the drift loop, the rollout orchestrator)."""

    def tick(self) -> None: ...


@dataclass(frozen=True)
class _Job:
    """One row of the job table: what runs, how often, and the scheduler options."""

    id: str
    func: Callable[..., None]
    interval: dict[str, float]
    args: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def refresh_metadata(repository: SignedRepository) -> None:
    """Re-sign the timestamp metadata, logging (not raising) a failure.

    Args:
        repository: The signed repository whose timestamp is renewed.
    """
    try:
        repository.refresh_timestamp()
    except Exception:  # top of a scheduled job
        logger.exception("metadata refresh failed")


def build_scheduler(
    *,
    settings: Settings,
    engine: Engine,
    repository: SignedRepository,
    drift_loop: Ticking,
    orchestrator: Ticking,
    experiments: Ticking | None = None,
) -> BackgroundScheduler:
    """A scheduler (not yet started) holding every periodic job of the control plane.

    The jobs, and why each exists:

    ``refresh-timestamp`` (hourly)
        Timestamp metadata expires quickly on purpose, so a device can tell a frozen
        repository from a quiet one; re-signing it hourly keeps it valid while nothing
        else changes.
    ``drift-loop`` (every ``drift.loop.INTERVAL_S``)
        Turns drift reports into retraining requests and carries approved requests
        through retraining, canary and promotion. Passes never overlap.
    ``cron-sync`` (every minute, first run at once)
        Makes the per-model ``retrain-cron-<model>`` jobs match the policies'
        crontabs, so a policy change takes effect without a restart.
    ``stale-devices`` (every minute)
        Flags online devices silent for longer than ``settings.stale_after_s``.
    ``event-store`` (hourly, first run at once)
        Keeps the events table's day partitions a week ahead on PostgreSQL and drops
        (on SQLite: deletes) events older than ``settings.event_retention_days``.
    ``rollout-orchestrator`` (every ``settings.rollout_tick_s``)
        Advances every active rollout one step (waves, gates, pauses, rollbacks).
        Passes never overlap.
    ``experiments`` (every ``settings.rollout_tick_s``, when given)
        Tests each running A/B experiment on its outcomes so far, promotes a winner,
        and in bandit mode moves devices between the arms. Passes never overlap.

    Args:
        settings: The control plane's settings (the stale and rollout intervals).
        engine: The database the jobs read and write.
        repository: The signed repository whose timestamp is kept fresh.
        drift_loop: The drift loop to tick.
        orchestrator: The rollout orchestrator to tick.
        experiments: The A/B experiment runner to tick, if any.

    Returns:
        The scheduler, with its jobs added; the caller starts and shuts it down.
    """
    scheduler = BackgroundScheduler(timezone="UTC")
    single_pass = {"max_instances": 1, "coalesce": True}
    jobs: tuple[_Job, ...] = (
        _Job("refresh-timestamp", refresh_metadata, {"hours": 1}, [repository]),
        _Job(
            "drift-loop",
            drift_loop.tick,
            {"seconds": DRIFT_LOOP_INTERVAL_S},
            options=single_pass,
        ),
        _Job(
            "cron-sync",
            sync_cron_jobs,
            {"seconds": 60},
            [scheduler, engine],
            {"next_run_time": datetime.now(UTC)},
        ),
        _Job(
            "stale-devices",
            detect_stale_devices,
            {"seconds": 60},
            [engine, timedelta(seconds=settings.stale_after_s)],
        ),
        _Job(
            "event-store",
            upkeep_event_store,
            {"seconds": EVENT_STORE_INTERVAL_S},
            [engine, settings.event_retention_days],
            {"next_run_time": datetime.now(UTC), **single_pass},
        ),
        _Job(
            "rollout-orchestrator",
            orchestrator.tick,
            {"seconds": settings.rollout_tick_s},
            options=single_pass,
        ),
    )
    if experiments is not None:
        jobs += (
            _Job(
                "experiments",
                experiments.tick,
                {"seconds": settings.rollout_tick_s},
                options=single_pass,
            ),
        )
    for job in jobs:
        scheduler.add_job(
            job.func, "interval", args=job.args, id=job.id, **job.interval, **job.options
        )
    return scheduler
