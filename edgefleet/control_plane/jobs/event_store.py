"""The events store's periodic upkeep: partitions made ahead, expired days dropped."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.engine import Engine

from edgefleet.control_plane.services.event_partitions import maintain_event_store

logger = logging.getLogger(__name__)

INTERVAL_S = 3600.0
"""Hourly: partitions are kept a week ahead, so a missed pass or two changes nothing."""


def upkeep_event_store(engine: Engine, retention_days: int) -> None:
    """One pass of ``maintain_event_store``, logging (not raising) a failure."""
    try:
        maintain_event_store(engine=engine, retention=timedelta(days=retention_days))
    except Exception:  # top of a scheduled job
        logger.exception("event store upkeep failed")
