"""The outbox: telemetry events and install reports land in SQLite (WAL) first and leave
only once the control plane has receipted them.

Appends are buffered in memory and committed in batches (``flush``; the forwarder
flushes every few tens of milliseconds and ``append`` flushes a full batch itself),
so an accepted event is on disk within one flush interval. A row is deleted when a
``Receipt`` from the control plane names its event id (``receipt``); the broker's
PUBACK says nothing about whether the control plane stored it.

Rows are keyed ``priority << 48 | counter``, so the table itself is ordered by
priority, then by insertion: reading in key order sends the most important class
first and keeps order within a class, and the overflow policy deletes whole runs.

**Overflow policy**, applied at every flush: while the rows take more than
``max_bytes``, delete the rows with the *highest priority number* first (3 before
2 before 1 before 0) and, within one priority, the *oldest* first. Each row is
charged its payload plus ``ROW_OVERHEAD``; the database file must also stay within
``max_bytes + FILE_SLACK`` (it is measured, and more rows go when it does not).

**Bytes on disk** = spool file + ``-wal``: the file is kept at its live pages
(``auto_vacuum=FULL``) and the write-ahead log is checkpointed with TRUNCATE once it
passes ``wal_limit(max_bytes)``, so both together stay within ``max_bytes +
disk_slack(max_bytes)``: ``FILE_SLACK`` (schema pages, B-tree interior pages) plus
the WAL limit plus one batch of rows (at most ``batch_size`` times the largest event).

**Drop accounting**: every drop is merged into one running summary (``meta`` row
``drops``, rewritten in the transaction that drops): rows dropped per priority, per
kind, and the inferences the dropped ``inference`` windows counted. It is not a row
of the spool, so it never causes a drop. ``seal_summary`` (the forwarder calls it once
the link is back and drops have stopped, or the summary is a minute old) turns it
into one ``spool`` event that is never dropped itself. A dropped row that had already
been handed to the broker may still arrive: if a receipt names it before the summary
is sealed, it is taken off.

**A buffer, never a single point of failure**: a spool that cannot be opened (garbage
over its header, a torn file) is moved aside as ``spool.sqlite.corrupt-<ts>`` and a
fresh one is made, with an error logged and an ``error`` event (``where: "spool"``)
in the new spool. ``check`` (called every second or so) notices a spool file deleted,
replaced or overwritten under the running agent and recreates it the same way,
carrying over every row it can still read. When no file can be made at all, the
spool runs in memory and keeps trying the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from edgefleet.agent.errors import SpoolError
from edgefleet.messages import InstallReport, TelemetryEvent

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
MAX_SEALED = 16
"""Sealed drop summaries awaiting their receipt; past this the open one keeps merging."""
MAYBE_DELIVERED_MAX = 10_000
CORRUPT_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
BUFFER_BATCHES = 8
"""Batches kept in memory while the disk refuses writes; older ones are dropped."""
DROP_LOG_EVERY_S = 10.0
"""Least time between two "spool full" warnings (each states the running summary)."""
MEMORY_RETRY_S = 30.0
"""How often a spool that fell back to memory tries its file again."""


def wal_limit(max_bytes: int) -> int:
    """WAL size past which it is checkpointed and truncated: an eighth of the cap,
    between 32 KiB and 4 MiB."""
    return min(4 * 2**20, max(32 * 1024, max_bytes // 8))


def disk_slack(max_bytes: int, batch_bytes: int = 512 * 1024) -> int:
    """Bytes the spool file plus its WAL may hold beyond ``max_bytes`` (see module doc)."""
    return FILE_SLACK + wal_limit(max_bytes) + batch_bytes


@dataclass(frozen=True)
class Row:
    """One spooled message as the forwarder sends it."""

    seq: int
    channel: str
    event_id: str
    payload: bytes


_Pending = tuple[int, str, str, str, int, int, bytes]
"""(priority, channel, event_id, kind, weight, size, payload) waiting for the next flush."""


class Spool:
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
            self.flush()

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

    # -- opening, recovering -----------------------------------------------------------

    def _open_or_recreate(self, expect_existing: bool) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            orphaned = _move_orphans(self.path)
        except OSError as e:
            return self._fresh(f"cannot open spool: {e}", None, carried=[])
        missing = not self.path.exists()
        try:
            db = self._connect(self.path)
        except (sqlite3.Error, SpoolError, OSError) as e:
            moved = self._move_aside()
            return self._fresh(f"cannot open spool: {e}", moved, carried=[])
        if missing and (orphaned or expect_existing):
            db.close()
            return self._fresh("spool file missing at start-up", None, carried=[])
        return db

    def _connect(self, path: Path | str) -> sqlite3.Connection:
        """Open (making it if needed) and check a spool database; sets the counters."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA auto_vacuum=FULL")  # takes on a new file, or with VACUUM
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint={max(8, self.wal_limit // PAGE_SIZE)}")
            db.execute(f"PRAGMA journal_size_limit={self.wal_limit}")
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _migrate(db)
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 1:
                db.execute("VACUUM")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise SpoolError(f"integrity check failed: {check}")
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq & ?), 0) FROM events",
                ((1 << PRIORITY_SHIFT) - 1,),
            ).fetchone()
        except BaseException:
            db.close()
            raise
        self._rows, self._bytes, self._counter = int(row[0]), int(row[1]), int(row[2])
        self._ino = os.stat(path).st_ino if path != ":memory:" else None
        return db

    def _fresh(
        self, reason: str, moved: Path | None, *, carried: list[_Pending], lost: int = 0
    ) -> sqlite3.Connection:
        """A new spool (file, else memory) holding ``carried`` and an error event saying why."""
        self.recreated += 1
        try:
            db = self._connect(self.path)
        except (sqlite3.Error, SpoolError, OSError) as e:
            logger.error(
                "spool file cannot be made, spooling in memory path=%s reason=%s", self.path, e
            )
            db = self._connect(":memory:")
            self._memory_since = time.monotonic()
        logger.error(
            "spool recreated path=%s reason=%s moved_to=%s rows_carried=%d rows_lost=%d",
            self.path,
            reason,
            moved,
            len(carried),
            lost,
        )
        self._db = db
        self._handed.clear()
        data: dict[str, Any] = {"where": "spool", "reason": reason, "rows_lost": lost}
        if moved is not None:
            data["moved_to"] = moved.name
        error = TelemetryEvent(kind="error", priority=1, data=data)
        payload = error.to_bytes()
        batch = [(1, TELEMETRY, error.event_id, "error", 0, len(payload) + ROW_OVERHEAD, payload)]
        try:
            self._insert(carried + batch)
        except sqlite3.Error as e:
            logger.error("spool unusable even when new reason=%s", e)
        return db

    def _failed(self, error: sqlite3.Error, what: str, carry: list[_Pending] | None = None) -> None:
        """A statement failed (lock held): a broken or vanished file is recreated; anything
        else (a full disk) keeps the batch buffered, within bounds, and raises ``SpoolError``."""
        name = getattr(error, "sqlite_errorname", "")
        if name in CORRUPT_ERRORS or self._ino is None or self._file_changed():
            self._recover(f"{what}: {error}", carry=carry)
            return
        if carry:
            self._buffer[:0] = carry[-self.batch_size * BUFFER_BATCHES :]
            del self._buffer[: max(0, len(self._buffer) - self.batch_size * BUFFER_BATCHES)]
        raise SpoolError(f"spool {what}: {error}") from error

    def _file_changed(self) -> bool:
        try:
            if self.path.stat().st_ino != self._ino:
                return True
            with self.path.open("rb") as file:
                return file.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC
        except OSError:
            return True

    def _readable_rows(self) -> tuple[list[_Pending], int]:
        """Every row the current connection can still read, and how many it cannot."""
        try:
            rows = self._db.execute(
                "SELECT seq, channel, event_id, kind, weight, size, payload FROM events "
                "ORDER BY seq"
            ).fetchall()
        except sqlite3.Error:
            return [], self._rows
        return [
            (int(s) >> PRIORITY_SHIFT, c, i, k, int(w), int(z), bytes(p))
            for s, c, i, k, w, z, p in rows
        ], 0

    def _recover(self, reason: str, *, carry: list[_Pending] | None = None) -> None:
        """Replace a broken or vanished spool (lock held), keeping every row still readable."""
        carried, lost = self._readable_rows()
        carried += self._buffer + list(carry or [])
        self._buffer = []
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        moved = None
        with contextlib.suppress(OSError):
            moved = self._move_aside() if self.path.exists() else None
            _move_orphans(self.path)
        self._db = self._fresh(reason, moved, carried=carried, lost=lost)

    def _retry_file(self) -> bool:
        """In memory: every ``MEMORY_RETRY_S`` try the file again, carrying the rows over."""
        if time.monotonic() - self._memory_since < MEMORY_RETRY_S:
            return False
        self._memory_since = time.monotonic()
        carried, _ = self._readable_rows()
        memory = self._db
        try:
            if self.path.exists():
                self._move_aside()
            _move_orphans(self.path)
            self._db = self._connect(self.path)
        except (sqlite3.Error, SpoolError, OSError) as e:
            logger.debug("spool file still unusable reason=%s", e)
            self._ino = None
            self._db = memory
            self._rows, self._bytes = self._count()
            return False
        memory.close()
        self._handed.clear()
        self._insert(carried)
        logger.warning("spool back on disk path=%s rows=%d", self.path, len(carried))
        return True

    def _move_aside(self) -> Path | None:
        """Rename the spool and its WAL to ``<name>.corrupt-<ts>``; None when nothing moved."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        moved = None
        for suffix in ("", "-wal", "-shm"):
            source = _sidecar(self.path, suffix)
            try:
                os.replace(source, _sidecar(target, suffix))
                moved = moved or target
            except FileNotFoundError:
                continue
            except OSError as e:
                logger.error("cannot move broken spool aside path=%s reason=%s", source, e)
                with contextlib.suppress(OSError):
                    source.unlink()
        return moved

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
