"""The spool itself: producers append, the forwarder reads in send order, receipts
delete, and the overflow policy drops and accounts for what did not fit.

The file format and the recovery of a broken file live in :mod:`.storage` and
:mod:`.recovery`; the package docstring gives the policies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import SpoolError
from edgefleet.agent.telemetry.spool.recovery import _Recovery
from edgefleet.agent.telemetry.spool.storage import (
    FILE_SLACK,
    PAGE_SIZE,
    PRIORITIES,
    PRIORITY_SHIFT,
    REPORT,
    ROW_OVERHEAD,
    SPOOL_KIND,
    TELEMETRY,
    _inferences,
    _Pending,
    _sidecar,
    wal_limit,
)
from edgefleet.messages import InstallReport, TelemetryEvent

logger = logging.getLogger(__name__)

MAX_SEALED = 16
"""Sealed drop summaries awaiting their receipt; past this the open one keeps merging."""
MAYBE_DELIVERED_MAX = 10_000
DROP_LOG_EVERY_S = 10.0
"""Least time between two "spool full" warnings (each states the running summary)."""


@dataclass(frozen=True)
class Row:
    """One spooled message as the forwarder sends it."""

    seq: int
    channel: str
    event_id: str
    payload: bytes


LIMIT_STEP = 16 * 1024
"""Bytes of rows ``limit`` drops per transaction."""
MIN_CAP = 64 * 1024
"""The least cap ``limit`` sets: room for install reports however full the disk is."""


class Spool(_Recovery):
    """A bounded, crash-safe FIFO per priority class, shared by producer threads."""

    def __init__(
        self, path: Path, *, max_bytes: int, batch_size: int = 512, expect_existing: bool = False
    ) -> None:
        """``expect_existing``: this data directory had a spool before (a missing file is
        then an error worth an event, not a first start)."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.wal_limit = wal_limit(max_bytes)
        self.recreated = 0
        """How often the spool file was found broken or gone and made afresh."""
        self._lock = threading.RLock()
        self._buffer: list[_Pending] = []
        self._handed: dict[str, int] = {}  # event id -> seq of rows handed to the forwarder
        self._maybe_delivered: dict[str, tuple[int, str, int]] = {}
        self._last_drop = 0.0
        self._first_drop = 0.0
        self._last_drop_log = -DROP_LOG_EVERY_S
        self._last_full_log = -DROP_LOG_EVERY_S
        self._ino: int | None = None
        self._memory_since = 0.0
        self._rows = self._bytes = self._counter = 0
        self._db = self._open_or_recreate(expect_existing)

    # -- producers -----------------------------------------------------------------

    def append(self, event: TelemetryEvent) -> None:
        """Accept ``event``; it is committed with the next batch."""
        payload = event.to_bytes()
        weight = _inferences(event)
        self._add((event.priority, TELEMETRY, event.event_id, event.kind, weight, payload))

    def append_report(self, report: InstallReport, *, priority: int = 0) -> None:
        """Keep an install report for ``up/report`` until receipted; committed at once."""
        payload = report.to_bytes()
        self._add((priority, REPORT, report.event_id, "install", 0, payload))
        self.flush()

    def _add(self, item: tuple[int, str, str, str, int, bytes]) -> None:
        priority, channel, event_id, kind, weight, payload = item
        pending = (priority, channel, event_id, kind, weight, len(payload) + ROW_OVERHEAD, payload)
        with self._lock:
            self._buffer.append(pending)
            full = len(self._buffer) >= self.batch_size
        if full:
            try:
                self.flush()
            except SpoolError as e:  # a full disk: kept in the bounded buffer, never raised
                now = time.monotonic()  # to a producer; said once in a while
                if now - self._last_full_log >= DROP_LOG_EVERY_S:
                    self._last_full_log = now
                    logger.warning("spool batches kept in memory reason=%s", e)

    def flush(self) -> None:
        """Commit buffered rows in one transaction, then apply the overflow policy."""
        with self._lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            try:
                self._insert(batch)
            except sqlite3.Error as e:
                self._failed(e, "write failed", carry=batch)
                return
            self._checkpoint_if_needed()

    def _insert(self, batch: list[_Pending]) -> None:
        rows = []
        for priority, channel, event_id, kind, weight, size, payload in batch:
            self._counter += 1
            seq = (priority << PRIORITY_SHIFT) | self._counter
            rows.append((seq, channel, event_id, kind, weight, size, payload))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO events (seq, channel, event_id, kind, weight, size, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._rows += len(rows)
            self._bytes += sum(row[5] for row in rows)
            if self._bytes > self.max_bytes or self._file_bytes() > self.max_bytes + FILE_SLACK:
                self._enforce_cap()

    def _enforce_cap(self) -> None:
        """Drop highest priority number first, oldest first within it (lock held, in a
        transaction); merge what went into the running summary."""
        summary = self._summary()
        dropped = 0
        for priority in reversed(PRIORITIES):
            low, high = priority << PRIORITY_SHIFT, (priority + 1) << PRIORITY_SHIFT
            while self._over_cap():
                rows = self._db.execute(
                    "SELECT seq, event_id, kind, weight, size FROM events "
                    "WHERE seq >= ? AND seq < ? AND kind != ? ORDER BY seq LIMIT 64",
                    (low, high, SPOOL_KIND),
                ).fetchall()
                if not rows:
                    break
                if self._bytes <= self.max_bytes:  # the charge holds, the file does not
                    rows = rows[: max(1, len(rows) // 8)]
                victims: list[tuple[int]] = []
                for seq, event_id, kind, weight, size in rows:
                    if victims and self._bytes <= self.max_bytes and not self._file_over():
                        break
                    victims.append((seq,))
                    self._bytes -= size
                    self._rows -= 1
                    _count(summary, priority, kind, weight, +1)
                    if self._handed.pop(event_id, None) is not None:
                        self._remember_maybe_delivered(event_id, priority, kind, weight)
                dropped += len(victims)
                self._db.executemany("DELETE FROM events WHERE seq = ?", victims)
        if dropped:
            now = time.time()
            summary.setdefault("since", now)
            summary["until"] = now
            self._save_summary(summary)
            self._last_drop = time.monotonic()
            self._first_drop = self._first_drop or self._last_drop
            if self._last_drop - self._last_drop_log < DROP_LOG_EVERY_S:
                return
            self._last_drop_log = self._last_drop
            logger.warning(
                "spool full, dropped events dropped=%d lost=%s inferences=%d max_bytes=%d",
                dropped,
                summary["lost"],
                summary["inferences"],
                self.max_bytes,
            )

    def _over_cap(self) -> bool:
        return self._rows > 0 and (self._bytes > self.max_bytes or self._file_over())

    def _file_over(self) -> bool:
        return self._file_bytes() > self.max_bytes + FILE_SLACK

    def _file_bytes(self) -> int:
        """Pages the database uses (in the file, or the WAL on their way to it)."""
        count = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(count - free) * PAGE_SIZE

    # -- the forwarder -------------------------------------------------------------

    def next_batch(self, limit: int, *, exclude: Iterable[int] = ()) -> list[Row]:
        """Up to ``limit`` rows in send order, skipping ``exclude`` (awaiting a receipt)."""
        if limit <= 0:
            return []
        skip = set(exclude)
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq FROM events ORDER BY seq LIMIT ?", (limit + len(skip),)
                ).fetchall()
                chosen = [int(seq) for (seq,) in rows if seq not in skip][:limit]
                if not chosen:
                    return []
                marks = ",".join("?" * len(chosen))
                found = self._db.execute(
                    f"SELECT seq, channel, event_id, payload FROM events WHERE seq IN ({marks}) "
                    "ORDER BY seq",
                    chosen,
                ).fetchall()
            except sqlite3.Error as e:
                self._failed(e, "read failed")
                return []
            out = [Row(int(s), str(c), str(i), bytes(p)) for s, c, i, p in found]
            for row in out:
                self._handed[row.event_id] = row.seq
        return out

    def receipt(self, event_ids: Iterable[str]) -> int:
        """Delete the rows the control plane receipted; returns how many went."""
        with self._lock:
            seqs = []
            deleted = 0
            summary: dict[str, Any] | None = None
            for event_id in event_ids:
                seq = self._handed.pop(event_id, None)
                if seq is not None:
                    seqs.append(seq)
                    continue
                lost = self._maybe_delivered.pop(event_id, None)
                if lost is not None:  # counted as dropped, yet it arrived
                    summary = summary if summary is not None else self._open_summary()
                    if summary is not None:
                        _count(summary, lost[0], lost[1], lost[2], -1)
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    if summary is not None:
                        self._save_summary(summary)
                    if seqs:
                        marks = ",".join("?" * len(seqs))
                        gone, size = self._db.execute(
                            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events "
                            f"WHERE seq IN ({marks})",
                            seqs,
                        ).fetchone()
                        self._db.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
                        self._rows -= int(gone)
                        self._bytes -= int(size)
                        deleted = int(gone)
            except sqlite3.Error as e:
                self._failed(e, "delete failed")
                return 0
            self._checkpoint_if_needed()
        return deleted

    def drop_summary(self) -> dict[str, Any] | None:
        """The running summary of drops not yet sealed into an event (None without drops)."""
        with self._lock:
            return self._open_summary()

    def seconds_since_drop(self) -> float:
        """Since the last drop in this process (infinite without one)."""
        return time.monotonic() - self._last_drop if self._last_drop else float("inf")

    def summary_age(self) -> float:
        """Since the running summary's first drop in this process (0 without one)."""
        return time.monotonic() - self._first_drop if self._first_drop else 0.0

    def seal_summary(self) -> TelemetryEvent | None:
        """Turn the running drop summary into one ``spool`` event that is never dropped
        (it costs nothing against the cap); a new summary starts with the next drop."""
        with self._lock:
            summary = self._open_summary()
            if summary is None:
                return None
            try:
                sealed = self._db.execute(
                    "SELECT COUNT(*) FROM events WHERE kind = ?", (SPOOL_KIND,)
                ).fetchone()[0]
                if sealed >= MAX_SEALED:
                    return None
                data = {**summary, "depth": self._rows + len(self._buffer)}
                event = TelemetryEvent(kind="spool", priority=0, data=data)
                payload = event.to_bytes()
                self._counter += 1
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute(
                        "INSERT INTO events (seq, channel, event_id, kind, weight, size, payload) "
                        "VALUES (?, ?, ?, ?, 0, 0, ?)",
                        (self._counter, TELEMETRY, event.event_id, SPOOL_KIND, payload),
                    )
                    self._db.execute("DELETE FROM meta WHERE key = 'drops'")
                self._rows += 1
            except sqlite3.Error as e:
                self._failed(e, "write failed")
                return None
            self._maybe_delivered.clear()
            self._first_drop = 0.0
        logger.info("spool drop summary sealed event_id=%s data=%s", event.event_id, data)
        return event

    def depth(self) -> int:
        """Rows held (committed plus buffered)."""
        with self._lock:
            return self._rows + len(self._buffer)

    def limit(self, max_bytes: int) -> int:
        """Change the cap to ``max_bytes`` (at least ``MIN_CAP``) and apply the overflow
        policy at once: the disk budget's watcher lowers it while the filesystem runs
        short (``edgefleet.agent.storage.watch``) and raises it back after. Returns
        the cap now in force. A disk too full even to delete leaves the cap lowered for
        the next flush, which tries again."""
        max_bytes = max(MIN_CAP, int(max_bytes))
        with self._lock:
            if max_bytes == self.max_bytes:
                return max_bytes
            self.max_bytes = max_bytes
            self.wal_limit = wal_limit(max_bytes)
            if self._ino is None:
                return max_bytes
            # Down in steps, each its own transaction with the WAL truncated after it:
            # deleting needs WAL pages, and the disk may have little room for them.
            while self._over_cap():
                rows = self._rows
                held = max(self._bytes, self._file_bytes() - FILE_SLACK)
                self.max_bytes = max(max_bytes, held - LIMIT_STEP)
                try:
                    with self._db:
                        self._db.execute("BEGIN")
                        self._enforce_cap()
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as e:
                    logger.warning("spool cap not applied yet reason=%s", e)
                    break
                finally:
                    self.max_bytes = max_bytes
                if self._rows == rows:
                    break
        return max_bytes

    def disk_bytes(self) -> int:
        """Bytes the spool takes on disk now: the file plus its WAL."""
        total = 0
        for path in (self.path, _sidecar(self.path, "-wal")):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def check(self) -> bool:
        """Notice a spool file deleted, replaced or overwritten under us and recreate it;
        retry the file now and then when running in memory. True when it had to act."""
        with self._lock:
            if self._ino is None:
                return self._retry_file()
            if not self.path.exists():
                self._recover("spool file deleted while the agent runs")
                return True
            if self._file_changed():
                self._recover("spool file replaced or overwritten while the agent runs")
                return True
        return False

    def close(self) -> None:
        self.flush()
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    # -- helpers (lock held) -----------------------------------------------------------

    def _checkpoint_if_needed(self) -> None:
        wal = _sidecar(self.path, "-wal")
        try:
            size = wal.stat().st_size
        except OSError:
            return
        if size > self.wal_limit:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                logger.warning("spool checkpoint failed reason=%s", e)

    def _count(self) -> tuple[int, int]:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
        return int(row[0]), int(row[1])

    def _open_summary(self) -> dict[str, Any] | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'drops'").fetchone()
        except sqlite3.Error:
            return None
        return dict(json.loads(row[0])) if row else None

    def _summary(self) -> dict[str, Any]:
        return self._open_summary() or {"dropped": {}, "lost": {}, "inferences": 0}

    def _save_summary(self, summary: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('drops', ?)", (json.dumps(summary),)
        )

    def _remember_maybe_delivered(self, event_id: str, priority: int, kind: str, w: int) -> None:
        if len(self._maybe_delivered) >= MAYBE_DELIVERED_MAX:
            self._maybe_delivered.pop(next(iter(self._maybe_delivered)))
        self._maybe_delivered[event_id] = (priority, kind, w)


def _count(summary: dict[str, Any], priority: int, kind: str, weight: int, sign: int) -> None:
    dropped, lost = summary["dropped"], summary["lost"]
    dropped[str(priority)] = dropped.get(str(priority), 0) + sign
    lost[kind] = lost.get(kind, 0) + sign
    summary["inferences"] = summary.get("inferences", 0) + sign * weight
    for table in (dropped, lost):
        for key in [k for k, v in table.items() if v <= 0]:
            del table[key]
