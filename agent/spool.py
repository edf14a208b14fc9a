"""The telemetry spool: events land in SQLite (WAL) first and leave only once acknowledged.

Appends are buffered in memory and committed in batches (``flush``; the forwarder
flushes every few tens of milliseconds and ``append`` flushes a full batch itself),
so an accepted event is on disk within one flush interval. Rows are deleted only
when the broker has acknowledged their QoS 1 publish (``ack``).

Overflow policy, applied at every flush: while the rows take more than
``max_bytes``, delete the rows with the *highest priority number* first (3 before
2 before 1 before 0) and, within one priority, the *oldest* first. Every drop is
counted per priority; ``take_drops`` hands the counts over once so the forwarder
can report them as a ``spool`` event. Rows are read back ordered by priority,
then by insertion, so order is kept within a priority class.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

from agent.errors import SpoolError
from edgefleet.messages import TelemetryEvent

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_order ON events (priority, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ROW_OVERHEAD = 64
"""Bytes charged per row on top of its payload, so tiny events still count."""


class Spool:
    """A bounded, crash-safe FIFO per priority class, shared by producer threads."""

    def __init__(self, path: Path, *, max_bytes: int, batch_size: int = 512) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._buffer: list[tuple[int, int, bytes]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
            meta = self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        except sqlite3.Error as e:
            raise SpoolError(f"cannot open spool {self.path}: {e}") from e
        self._rows, self._bytes = int(row[0]), int(row[1])
        self._dropped: dict[int, int] = (
            {int(k): int(v) for k, v in json.loads(meta[0]).items()} if meta else {}
        )

    # -- producers -----------------------------------------------------------------

    def append(self, event: TelemetryEvent) -> None:
        """Accept ``event``; it is committed with the next batch."""
        payload = event.to_bytes()
        with self._lock:
            self._buffer.append((event.priority, len(payload) + ROW_OVERHEAD, payload))
            full = len(self._buffer) >= self.batch_size
        if full:
            self.flush()

    def flush(self) -> None:
        """Commit buffered events in one transaction, then apply the overflow policy."""
        with self._lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT INTO events (priority, size, payload) VALUES (?, ?, ?)", batch
                    )
                    self._rows += len(batch)
                    self._bytes += sum(size for _, size, _ in batch)
                    if self._bytes > self.max_bytes:
                        self._enforce_cap()
            except sqlite3.Error as e:
                self._rows, self._bytes = self._count()
                raise SpoolError(f"spool write failed: {e}") from e

    def _enforce_cap(self) -> None:
        """Drop highest priority number first, oldest first within it (lock held)."""
        dropped_now: dict[int, int] = {}
        while self._bytes > self.max_bytes and self._rows:
            rows = self._db.execute(
                "SELECT seq, priority, size FROM events ORDER BY priority DESC, seq ASC LIMIT 256"
            ).fetchall()
            victims = []
            for seq, priority, size in rows:
                if self._bytes <= self.max_bytes:
                    break
                victims.append((seq,))
                self._bytes -= size
                self._rows -= 1
                dropped_now[priority] = dropped_now.get(priority, 0) + 1
            self._db.executemany("DELETE FROM events WHERE seq = ?", victims)
        for priority, n in dropped_now.items():
            self._dropped[priority] = self._dropped.get(priority, 0) + n
        self._save_drops()
        logger.warning(
            "spool full, dropped events dropped=%s max_bytes=%d", dropped_now, self.max_bytes
        )

    # -- the forwarder -------------------------------------------------------------

    def next_batch(self, limit: int, *, exclude: set[int]) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (seq, payload) rows in send order, skipping ``exclude`` (in flight)."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM events ORDER BY priority ASC, seq ASC LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows if seq not in exclude][:limit]

    def ack(self, seqs: list[int]) -> None:
        """Delete rows the broker acknowledged."""
        if not seqs:
            return
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    marks = ",".join("?" * len(seqs))
                    self._db.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
            except sqlite3.Error as e:
                raise SpoolError(f"spool delete failed: {e}") from e
            self._rows, self._bytes = self._count()

    def take_drops(self) -> dict[int, int]:
        """Drop counts per priority since the last call (persisted until taken)."""
        with self._lock:
            drops, self._dropped = self._dropped, {}
            if drops:
                self._save_drops()
        return drops

    def depth(self) -> int:
        """Events held (committed plus buffered)."""
        with self._lock:
            return self._rows + len(self._buffer)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    # -- helpers (lock held) -----------------------------------------------------------

    def _count(self) -> tuple[int, int]:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
        return int(row[0]), int(row[1])

    def _save_drops(self) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)",
            (json.dumps({str(k): v for k, v in self._dropped.items()}),),
        )
