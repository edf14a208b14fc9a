"""Scheduled jobs beyond the drift loop: cron retraining and stale-device detection.

Models whose policy sets ``retrain_cron`` get a retraining request on that schedule
(the policy still decides whether it needs approval). The cron jobs are synced from
the database every minute, so a policy change takes effect without a restart.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import Bundle, ModelPolicy, RetrainingRequest
from edgefleet.control_plane.drift.retraining import create_request
from edgefleet.control_plane.services.devices import mark_stale_devices

logger = logging.getLogger(__name__)

CRON_JOB_PREFIX = "retrain-cron-"
OPEN_STATES = ("pending_approval", "approved", "running", "awaiting_model")


def request_scheduled_retraining(engine: Engine, model: str) -> None:
    """A cron tick: request retraining of the newest built version, unless one is open."""
    try:
        with Session(engine) as session:
            open_request = session.exec(
                select(RetrainingRequest).where(
                    RetrainingRequest.model == model,
                    col(RetrainingRequest.state).in_(OPEN_STATES),
                )
            ).first()
            if open_request is not None:
                logger.info("scheduled retraining skipped model=%s open=%s", model, open_request.id)
                return
            newest = session.exec(
                select(Bundle).where(Bundle.model == model).order_by(col(Bundle.release).desc())
            ).first()
            if newest is None:
                logger.info("scheduled retraining skipped model=%s reason=never built", model)
                return
            create_request(
                session=session,
                model=model,
                from_version=newest.model_version,
                cohort=newest.profile,
                trigger="schedule",
                reason=f"scheduled retraining of {model} v{newest.model_version}",
            )
    except Exception:  # top of a scheduled job
        logger.exception("scheduled retraining failed model=%s", model)


def sync_cron_jobs(scheduler: BaseScheduler, engine: Engine) -> None:
    """Make the scheduler's retraining jobs match the policies' crontabs."""
    try:
        with Session(engine) as session:
            wanted = {
                p.model: p.retrain_cron
                for p in session.exec(select(ModelPolicy)).all()
                if p.retrain_cron and p.retrain != "off"
            }
        for job in scheduler.get_jobs():
            if job.id.startswith(CRON_JOB_PREFIX) and job.id[len(CRON_JOB_PREFIX) :] not in wanted:
                job.remove()
        for model, crontab in wanted.items():
            job_id = CRON_JOB_PREFIX + model
            trigger = CronTrigger.from_crontab(crontab, timezone="UTC")
            existing = scheduler.get_job(job_id)
            if existing is not None and str(existing.trigger) == str(trigger):
                continue
            scheduler.add_job(
                request_scheduled_retraining,
                trigger,
                args=[engine, model],
                id=job_id,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
            )
            logger.info("retraining scheduled model=%s cron=%s", model, crontab)
    except Exception:  # top of a scheduled job
        logger.exception("cron sync failed")


def detect_stale_devices(engine: Engine, silent_for: timedelta) -> None:
    """A scheduler tick: flag online devices silent for longer than ``silent_for`` stale."""
    try:
        with Session(engine) as session:
            mark_stale_devices(session=session, silent_for=silent_for)
    except Exception:  # top of a scheduled job
        logger.exception("stale-device detection failed")
