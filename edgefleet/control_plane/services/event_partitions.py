"""The events store's upkeep: day partitions made ahead, expired days dropped whole.

On PostgreSQL ``event`` is partitioned by range of ``ts`` (revision 0010): one partition
per UTC day, ``event_pYYYYMMDD``, and ``event_default`` for an event whose day has no
partition (a device with a wrong clock). ``maintain_event_store`` keeps partitions
``DAYS_AHEAD`` days ahead of today, so ingest never lands in the default partition in
normal operation, and drops every day older than the retention: ``DROP TABLE`` of a
partition frees its disk at once and costs nothing per row, where ``DELETE`` rewrites
every row, bloats the table and holds ingest back while it runs. On SQLite, which has no
partitions, expired events are deleted.

A partition made for a day the default partition already holds rows of takes those rows
along (moved in the same transaction), since PostgreSQL refuses to attach a range the
default partition has rows in. Replicas running the job together take turns on an
advisory lock.

Aggregates (``event_aggregates``) and reporters older than the retention go too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, text
from sqlalchemy.engine import Connection, Engine

from edgefleet.control_plane.core.tables import (
    Event,
    EventAggregate,
    EventHistogramBucket,
    RolloutReporter,
)

__all__ = ["DAYS_AHEAD", "StoreUpkeep", "maintain_event_store", "partition_name"]

logger = logging.getLogger(__name__)

DAYS_AHEAD = 7
"""Days of partitions kept ready beyond today."""
_LOCK_KEY = 0x6576_656E_7470  # pg_advisory_xact_lock key for "eventp"
_NAME = re.compile(r"^event_p(\d{8})$")


@dataclass
class StoreUpkeep:
    """What one pass did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted_rows: int = 0  # rows deleted (SQLite, or PostgreSQL's default partition)


def partition_name(day: date) -> str:
    """The partition holding the events of UTC ``day``."""
    return f"event_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[str, str]:
    return f"{day.isoformat()} 00:00:00+00", f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"


def is_partitioned(connection: Connection) -> bool:
    """Whether ``event`` is a partitioned PostgreSQL table (at revision 0010 or later)."""
    if connection.dialect.name != "postgresql":
        return False
    found = connection.execute(
        text("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('event')")
    ).first()
    return found is not None


def partitions(connection: Connection) -> dict[date, str]:
    """The day partitions ``event`` has now, by day."""
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('event')"
        )
    ).scalars()
    found: dict[date, str] = {}
    for name in rows:
        match = _NAME.match(name)
        if match:
            found[datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return found


def create_partition(connection: Connection, day: date) -> str:
    """Make ``day``'s partition, moving in any rows of that day from the default one."""
    name = partition_name(day)
    low, high = _bounds(day)
    connection.execute(text(f"CREATE TABLE {name} (LIKE event INCLUDING DEFAULTS)"))
    connection.execute(
        text(
            f"WITH moved AS (DELETE FROM event_default WHERE ts >= :low AND ts < :high "
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        ),
        {"low": low, "high": high},
    )
    connection.execute(
        text(f"ALTER TABLE event ATTACH PARTITION {name} FOR VALUES FROM ('{low}') TO ('{high}')")
    )
    return name


def maintain_event_store(
    *, engine: Engine, retention: timedelta, now: datetime | None = None
) -> StoreUpkeep:
    """One pass: partitions ready ``DAYS_AHEAD`` days ahead, events past ``retention`` gone.

    A day is dropped once all of it is older than ``now - retention``.
    """
    now = now or datetime.now(UTC)
    cutoff = now - retention
    upkeep = StoreUpkeep()
    with engine.begin() as connection:
        if is_partitioned(connection):
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            have = partitions(connection)
            today = now.astimezone(UTC).date()
            for n in range(-1, DAYS_AHEAD + 1):
                day = today + timedelta(days=n)
                if day not in have and day + timedelta(days=1) > cutoff.date():
                    upkeep.created.append(create_partition(connection, day))
            for day, name in sorted(have.items()):
                if datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) <= cutoff:
                    connection.execute(text(f"DROP TABLE {name}"))
                    upkeep.dropped.append(name)
            upkeep.deleted_rows = connection.execute(
                text("DELETE FROM event_default WHERE ts < :cutoff"), {"cutoff": cutoff}
            ).rowcount
        else:
            upkeep.deleted_rows = connection.execute(
                delete(Event).where(Event.ts < cutoff)  # type: ignore[arg-type]
            ).rowcount
        for table in (EventAggregate, EventHistogramBucket):
            connection.execute(delete(table).where(table.minute < cutoff))  # type: ignore[arg-type]
        connection.execute(
            delete(RolloutReporter).where(RolloutReporter.last_ts < cutoff)  # type: ignore[arg-type]
        )
    if upkeep.created or upkeep.dropped or upkeep.deleted_rows:
        logger.info(
            "event store upkeep created=%s dropped=%s deleted_rows=%d",
            ",".join(upkeep.created) or "-",
            ",".join(upkeep.dropped) or "-",
            upkeep.deleted_rows,
        )
    return upkeep
