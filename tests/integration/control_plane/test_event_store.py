"""The events store on PostgreSQL: bulk ingest exactly once, aggregates counted once,
day partitions made ahead and expired days dropped (SQLite: expired rows deleted)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    Event,
    EventAggregate,
    Rollout,
    RolloutDevice,
)
from edgefleet.control_plane.services.event_aggregates import read_wave_telemetry
from edgefleet.control_plane.services.event_partitions import (
    DAYS_AHEAD,
    maintain_event_store,
    partition_name,
    partitions,
)
from edgefleet.control_plane.services.events import IngestMethod, ingest_events
from edgefleet.messages import TelemetryEvent

pytestmark = pytest.mark.integration

DEVICE, OTHER = "dev-store00001", "dev-store00002"
# Far from today: the migration has already made today's partitions.
NOW = (datetime.now(UTC) + timedelta(days=100)).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture
def pg(pg_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(data_dir=tmp_path, database_url=pg_url))
    create_db_and_tables(engine)  # the migrations, 0010 included
    yield engine
    engine.dispose()


def window(count: int, errors: int = 0, *, at: datetime | None = None) -> TelemetryEvent:
    histogram = {"bounds_ms": [1.0, 5.0, 10.0], "counts": [0, count, 0, 0]}
    return TelemetryEvent(
        kind="inference",
        bundle_id="digits-2",
        data={"count": count, "errors": errors, "window_s": 10, "histogram": histogram},
        ts=(at or datetime.now(UTC)).timestamp(),
    )


def stored(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Event)).one())


@pytest.mark.parametrize("method", ["values", "copy"])
def test_bulk_ingest_stores_duplicates_in_a_burst_and_across_bursts_once(
    pg: Engine, method: IngestMethod
) -> None:
    first = [window(n) for n in range(1, 301)]
    burst = [(DEVICE, e) for e in first] + [(DEVICE, first[0]), (DEVICE, first[7])]
    with Session(pg) as session:
        assert ingest_events(session=session, batch=burst, method=method) == 300
    later = [window(n) for n in range(301, 401)]
    overlap = [(DEVICE, e) for e in first[100:] + later]  # 200 seen before, 100 new
    with Session(pg) as session:
        assert ingest_events(session=session, batch=overlap, method=method) == 100
    with Session(pg) as session:  # all of it redelivered: nothing new
        assert ingest_events(session=session, batch=burst + overlap, method=method) == 0
    assert stored(pg) == 400
    with Session(pg) as session:
        kept = session.get(Event, first[7].event_id)
        assert kept is not None and kept.data["count"] == 8 and kept.device_id == DEVICE


def test_aggregates_count_each_stored_event_once_and_the_gates_read_them(pg: Engine) -> None:
    with Session(pg) as session:
        session.add(
            Bundle(
                id="digits-2",
                model="digits",
                model_version="2",
                profile="x86",
                release=2,
                target="digits-2.tar",
                sha256="a" * 64,
                length=1,
                path="digits-2.tar",
            )
        )
        session.add_all([Device(id=DEVICE), Device(id=OTHER)])
        rollout = Rollout(bundle_id="digits-2", wave_started_at=datetime.now(UTC))
        session.add(rollout)
        session.commit()
        rollout_id = rollout.id
        assert rollout_id is not None
        session.add_all(
            [
                RolloutDevice(rollout_id=rollout_id, device_id=DEVICE, wave=0, state="active"),
                RolloutDevice(rollout_id=rollout_id, device_id=OTHER, wave=1, state="offered"),
            ]
        )
        session.commit()
    events = [window(10, errors=1), window(30, errors=2)]
    burst = [(DEVICE, e) for e in events] + [(OTHER, window(50))]
    for method in ("values", "copy"):  # the second burst is all redeliveries
        with Session(pg) as session:
            ingest_events(session=session, batch=burst, method=method)
    with Session(pg) as session:
        rows = session.exec(select(EventAggregate)).all()
        assert sum(r.events for r in rows) == 3
        stored_rollout = session.get(Rollout, rollout_id)
        assert stored_rollout is not None
        telemetry = read_wave_telemetry(
            session=session,
            rollout=stored_rollout,
            wave=0,
            since=datetime.now(UTC) - timedelta(minutes=5),
        )
    assert [(w["count"], w["errors"]) for w in telemetry.candidate] == [(40.0, 3.0)]
    assert telemetry.candidate[0]["histogram"] == {"bounds_ms": [5.0], "counts": [40.0]}
    assert telemetry.reporters == {DEVICE, OTHER}  # OTHER is wave 1: not a wave-0 member


def days_of(engine: Engine) -> set[date]:
    with engine.connect() as connection:
        return set(partitions(connection))


def test_partitions_are_made_ahead_and_expired_days_dropped_whole(pg: Engine) -> None:
    today = NOW.date()
    upkeep = maintain_event_store(engine=pg, retention=timedelta(days=30), now=NOW)
    ahead = {today + timedelta(days=n) for n in range(-1, DAYS_AHEAD + 1)}
    assert ahead <= days_of(pg)
    assert partition_name(today + timedelta(days=DAYS_AHEAD)) in upkeep.created
    # An event beyond every partition waits in the default one, and moves into its day's
    # partition when that is made; an expired day goes whole.
    future = NOW + timedelta(days=DAYS_AHEAD + 2)
    old = NOW - timedelta(days=31)
    maintain_event_store(engine=pg, retention=timedelta(days=30), now=old)  # makes old's day
    batch = [(DEVICE, window(1, at=t)) for t in (future, old, old, NOW)]
    with Session(pg) as session:
        assert ingest_events(session=session, batch=batch) == 4
    with pg.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_default")).scalar() == 1
    later = NOW + timedelta(days=3)
    upkeep = maintain_event_store(engine=pg, retention=timedelta(days=30), now=later)
    assert partition_name(future.date()) in upkeep.created
    assert partition_name(old.date()) in upkeep.dropped
    assert old.date() not in days_of(pg) and future.date() in days_of(pg)
    with pg.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_default")).scalar() == 0
        moved = f"SELECT count(*) FROM {partition_name(future.date())}"
        assert connection.execute(text(moved)).scalar() == 1
    assert upkeep.deleted_rows == 0  # nothing was deleted row by row
    assert stored(pg) == 2


def test_sqlite_keeps_one_table_and_deletes_expired_events(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    create_db_and_tables(engine)
    batch = [(DEVICE, window(1, at=t)) for t in (NOW - timedelta(days=40), NOW)]
    with Session(engine) as session:
        assert ingest_events(session=session, batch=batch, method="copy") == 2
    upkeep = maintain_event_store(engine=engine, retention=timedelta(days=30), now=NOW)
    assert upkeep.deleted_rows == 1 and not upkeep.created and not upkeep.dropped
    assert stored(engine) == 1


def test_copy_ingest_keeps_text_copy_would_misread_byte_for_byte(pg: Engine) -> None:
    """COPY's text format gives backslash, tab and newlines meanings: rows are escaped."""
    awkward = "a\\b\tc\nd\re \\N"
    event = TelemetryEvent(
        kind="inference",
        bundle_id=awkward,
        data={"note": awkward, "nested": {"list": [awkward, None, 1.5]}},
    )
    plain = TelemetryEvent(kind="inference", bundle_id=None, release=None, data={})
    with Session(pg) as session:
        assert (
            ingest_events(session=session, batch=[(DEVICE, event), (OTHER, plain)], method="copy")
            == 2
        )
    with Session(pg) as session:
        got = session.exec(select(Event).where(Event.event_id == event.event_id)).one()
        empty = session.exec(select(Event).where(Event.event_id == plain.event_id)).one()
    assert (got.bundle_id, got.data) == (awkward, event.data)
    assert (empty.bundle_id, empty.release, empty.data) == (None, None, {})
