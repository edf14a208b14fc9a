"""Telemetry bursts are stored in one transaction, each event exactly once."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, func, select

from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import Device, Event
from edgefleet.control_plane.services.events import ingest_event, ingest_events
from edgefleet.messages import TelemetryEvent


def engine_at(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(Settings(data_dir=tmp_path))
    create_db_and_tables(engine)
    return engine


def event(n: int) -> TelemetryEvent:
    return TelemetryEvent(kind="inference", priority=2, data={"count": n})


def stored(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Event)).one())


def test_a_burst_is_stored_whole_and_counts_only_new_events(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    earlier, new = event(0), [event(i) for i in range(1, 50)]
    with Session(engine) as session:
        assert ingest_event(session=session, device_id="dev-ingest0001", event=earlier)
    burst = [("dev-ingest0001", e) for e in [earlier, *new, new[0], new[1]]]
    with Session(engine) as session:
        assert ingest_events(session=session, batch=burst) == 49
    assert stored(engine) == 50
    with Session(engine) as session:  # the whole burst redelivered: nothing new
        assert ingest_events(session=session, batch=burst) == 0
    assert stored(engine) == 50


def test_a_burst_refreshes_last_seen_of_every_device_in_it(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    with Session(engine) as session:
        session.add(Device(id="dev-ingest0001", profile="p", stale=True))
        session.add(Device(id="dev-ingest0002", profile="p", stale=True))
        session.commit()
    with Session(engine) as session:
        burst = [("dev-ingest0001", event(1)), ("dev-ingest0002", event(2))]
        assert ingest_events(session=session, batch=burst) == 2
    with Session(engine) as session:
        devices = session.exec(select(Device)).all()
        assert all(not d.stale and d.last_seen is not None for d in devices)


def test_an_empty_burst_stores_nothing(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    with Session(engine) as session:
        assert ingest_events(session=session, batch=[]) == 0
