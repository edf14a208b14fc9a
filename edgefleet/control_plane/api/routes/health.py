"""Liveness of this replica: its MQTT link and its supervised worker threads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from edgefleet.control_plane.api.deps import LinkDep

router = APIRouter(tags=["health"])

DEGRADED_FOR_S = 300.0
"""A worker that died stays reported (status ``degraded``) this long after restarting."""


class WorkerHealth(BaseModel):
    name: str
    running: bool
    restarts: int
    last_death_at: datetime | None
    last_error: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    """``degraded`` while a worker thread is down, and for ``DEGRADED_FOR_S`` after one
    died (it is restarted; ``workers`` says which, when and why)."""
    broker_connected: bool
    workers: list[WorkerHealth] = []
    """The workers that are down or died recently (empty when all is well)."""


@router.get("/health")
def read_health(link: LinkDep) -> Health:
    now = datetime.now(UTC)
    troubled = [
        WorkerHealth(
            name=w.name,
            running=w.running,
            restarts=w.restarts,
            last_death_at=w.last_death_at,
            last_error=w.last_error,
        )
        for w in link.workers()
        if w.troubled(within=DEGRADED_FOR_S, now=now)
    ]
    return Health(
        status="degraded" if troubled else "ok",
        broker_connected=link.connected,
        workers=troubled,
    )
