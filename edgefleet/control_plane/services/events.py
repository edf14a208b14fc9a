"""Telemetry events from devices: stored exactly once, counted and listed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Numeric, Text, case, cast, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, func, select

from edgefleet.control_plane.core.tables import Device, Event, EventSummary, utcnow
from edgefleet.control_plane.services.devices import touch_device
from edgefleet.control_plane.services.field_data import store_samples
from edgefleet.messages import TelemetryEvent

logger = logging.getLogger(__name__)


def ingest_events(*, session: Session, batch: Sequence[tuple[str, TelemetryEvent]]) -> int:
    """Store a burst of ``(device_id, event)`` in one transaction; how many were new.

    One commit per burst instead of per event is what lets ingest keep up with a
    fleet's telemetry (``bench/fleet_rollout.py``). Events already stored, or repeated
    within the burst, are skipped. If another replica stores one of them between the
    check and the commit, the burst is retried event by event, so each is still
    stored exactly once.
    """
    unique = {event.event_id: (device_id, event) for device_id, event in batch}
    if not unique:
        return 0
    known = set(session.exec(select(Event.event_id).where(col(Event.event_id).in_(unique))).all())
    fresh = [(d, e) for event_id, (d, e) in unique.items() if event_id not in known]
    # One UPDATE for every device heard from in the burst (not a load per device).
    session.execute(
        update(Device)
        .where(col(Device.id).in_(sorted({d for d, _ in fresh})))
        .values(last_seen=utcnow(), stale=False)
    )
    if fresh:  # a Core insert: building ORM objects cost more than the database did
        session.execute(insert(Event), [_values(d, e) for d, e in fresh])
        store_samples(session=session, batch=fresh)  # field data, in the same commit
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return sum(ingest_event(session=session, device_id=d, event=e) for d, e in fresh)
    return len(fresh)


def _values(device_id: str, event: TelemetryEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "device_id": device_id,
        "kind": event.kind,
        "priority": event.priority,
        "bundle_id": event.bundle_id,
        "release": event.release,
        "ts": datetime.fromtimestamp(event.ts, UTC),
        "data": event.data,
    }


def ingest_event(*, session: Session, device_id: str, event: TelemetryEvent) -> bool:
    """Store ``event`` from ``device_id``; False when it was already stored (a redelivery).

    The primary key on ``event_id`` makes this exactly-once even with several
    control-plane replicas racing on the same redelivered message.
    """
    if session.get(Event, event.event_id) is not None:
        return False
    touch_device(session=session, device_id=device_id)
    session.add(Event(**_values(device_id, event)))
    store_samples(session=session, batch=[(device_id, event)])
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def list_events(
    *,
    session: Session,
    device_id: str | None = None,
    kind: str | None = None,
    bundle_id: str | None = None,
    limit: int = 500,
) -> Sequence[Event]:
    """The newest ``limit`` events, by device timestamp; a None filter matches all."""
    query = select(Event)
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    if kind is not None:
        query = query.where(Event.kind == kind)
    if bundle_id is not None:
        query = query.where(Event.bundle_id == bundle_id)
    return session.exec(query.order_by(col(Event.ts).desc()).limit(limit)).all()


def count_events(*, session: Session, device_id: str | None = None, kind: str | None = None) -> int:
    """How many events are stored; a None filter matches all."""
    query = select(func.count()).select_from(Event)
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    if kind is not None:
        query = query.where(Event.kind == kind)
    return int(session.exec(query).one())


def summarize_events(
    *, session: Session, kind: str, device_id: str | None = None
) -> list[EventSummary]:
    """Per device: how many ``kind`` events are stored, and the sum of their ``data.count``.

    For ``inference`` events the sum is the inferences the device served in the stored
    windows. One aggregate query, grouped in the database, so its cost is a scan of the
    kind's index rather than a transfer of every event. A ``count`` that is not a JSON
    number (a device may send anything in ``data``) adds nothing, as in the gates.
    """
    total = func.coalesce(func.sum(_data_count(session)), 0)
    query = (
        select(Event.device_id, func.count(), total)
        .where(Event.kind == kind)
        .group_by(Event.device_id)
        .order_by(Event.device_id)
    )
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    return [
        EventSummary(device_id=device, events=int(events), count_total=int(count_total))
        for device, events, count_total in session.exec(query).all()
    ]


def _data_count(session: Session) -> ColumnElement[Any]:
    """``data.count`` as a number when it is a JSON number, else NULL (SQL, per dialect).

    SQLite's ``json_extract`` already yields an integer or a real; PostgreSQL's ``->>``
    yields text, cast to ``numeric`` only once ``json_typeof`` has said it is a number
    (a cast of anything else would fail the whole query).
    """
    data = col(Event.data)
    if session.get_bind().dialect.name == "postgresql":
        is_number = func.json_typeof(data.op("->")("count")) == "number"
        text = data.op("->>", return_type=Text)("count")
        return case((is_number, cast(text, Numeric)), else_=None)
    is_number = func.json_type(data, "$.count").in_(["integer", "real"])
    return case((is_number, func.json_extract(data, "$.count")), else_=None)
