"""The spool's SQLite file: its schema and size limits, its sidecar files, and the
migration of a spool written by an older agent."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

from edgefleet.messages import TelemetryEvent

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    weight INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ROW_OVERHEAD = 64
"""Bytes charged per row on top of its payload, so tiny events still count."""
PRIORITY_SHIFT = 48
PRIORITIES = (0, 1, 2, 3)
PAGE_SIZE = 4096
FILE_SLACK = 16 * PAGE_SIZE
"""How far the database file may exceed ``max_bytes``: the schema and meta pages and the
B-tree's interior pages, which no row's charge covers."""
SQLITE_MAGIC = b"SQLite format 3\x00"
TELEMETRY = "telemetry"
REPORT = "report"
SPOOL_KIND = "spool"


def wal_limit(max_bytes: int) -> int:
    """WAL size past which it is checkpointed and truncated: an eighth of the cap,
    between 32 KiB and 4 MiB."""
    return min(4 * 2**20, max(32 * 1024, max_bytes // 8))


def disk_slack(max_bytes: int, batch_bytes: int = 512 * 1024) -> int:
    """Bytes the spool file plus its WAL may hold beyond ``max_bytes`` (see module doc)."""
    return FILE_SLACK + wal_limit(max_bytes) + batch_bytes


_Pending = tuple[int, str, str, str, int, int, bytes]
"""(priority, channel, event_id, kind, weight, size, payload) waiting for the next flush."""


def _inferences(event: TelemetryEvent) -> int:
    """The inferences an event carries (``data.count`` of an inference window)."""
    if event.kind != "inference":
        return 0
    count = event.data.get("count")
    return count if isinstance(count, int) and count > 0 else 0


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _move_orphans(path: Path) -> bool:
    """A ``-wal``/``-shm`` without its database would be replayed into a new one: move
    them aside. True when there were any."""
    if path.exists():
        return False
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    moved = False
    for suffix in ("-wal", "-shm"):
        orphan = _sidecar(path, suffix)
        if orphan.exists():
            logger.error("spool file missing, its %s moved aside path=%s", suffix, path)
            os.replace(orphan, _sidecar(path.with_name(f"{path.name}.orphan-{stamp}"), suffix))
            moved = True
    return moved


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a spool of an older agent to ``SCHEMA_VERSION`` (its rows kept)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)").fetchall()}
    old: list[tuple[Any, ...]] = []
    drops: dict[str, int] = {}
    if columns and "event_id" not in columns:  # version 1: seq, priority, size, payload
        old = db.execute("SELECT priority, payload FROM events ORDER BY priority, seq").fetchall()
        meta = db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        drops = json.loads(meta[0]) if meta else {}
        db.execute("DROP TABLE events")
        db.execute("DROP INDEX IF EXISTS events_order")
        db.execute("DELETE FROM meta WHERE key='dropped'")
    db.executescript(SCHEMA)
    counter = 0
    for priority, payload in old:
        try:
            event = msgspec.json.decode(bytes(payload), type=TelemetryEvent)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        counter += 1
        db.execute(
            "INSERT INTO events (seq, channel, event_id, kind, weight, size, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (int(priority) << PRIORITY_SHIFT) | counter,
                TELEMETRY,
                event.event_id,
                event.kind,
                _inferences(event),
                len(payload) + ROW_OVERHEAD,
                bytes(payload),
            ),
        )
    if drops:
        summary = {"dropped": drops, "lost": {}, "inferences": 0, "since": time.time()}
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('drops', ?)", (json.dumps(summary),)
        )
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
