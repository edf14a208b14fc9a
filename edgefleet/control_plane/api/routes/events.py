"""Telemetry events as stored: list with filters, counts, and per-device summaries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.control_plane.api.deps import SessionDep
from edgefleet.control_plane.core.tables import EventPublic, EventSummary
from edgefleet.control_plane.services.events import count_events, list_events, summarize_events

router = APIRouter(prefix="/events", tags=["events"])


@router.get("")
def read_events(
    session: SessionDep,
    device_id: str | None = None,
    kind: str | None = None,
    bundle_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[EventPublic]:
    events = list_events(
        session=session, device_id=device_id, kind=kind, bundle_id=bundle_id, limit=limit
    )
    return [EventPublic.model_validate(e) for e in events]


@router.get("/count")
def read_event_count(
    session: SessionDep, device_id: str | None = None, kind: str | None = None
) -> dict[str, int]:
    return {"count": count_events(session=session, device_id=device_id, kind=kind)}


@router.get("/summary")
def read_event_summary(
    session: SessionDep, kind: str = "inference", device_id: str | None = None
) -> list[EventSummary]:
    """Per device, the stored events of ``kind`` and the sum of their ``data.count``:
    for ``inference`` (the default), the inferences served in the stored windows."""
    return summarize_events(session=session, kind=kind, device_id=device_id)
