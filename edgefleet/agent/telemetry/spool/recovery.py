"""Opening the spool, and recovering it when its file breaks or disappears.

A spool that cannot be opened is moved aside and made afresh; one whose file is
deleted, replaced or overwritten under the running agent is recreated with every
row still readable; with no file possible at all it runs in memory and keeps
trying the file. These methods are mixed into ``Spool`` and run with its lock held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.errors import SpoolError
from edgefleet.agent.telemetry.spool.storage import (
    PAGE_SIZE,
    PRIORITY_SHIFT,
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    SQLITE_MAGIC,
    TELEMETRY,
    _migrate,
    _move_orphans,
    _Pending,
    _sidecar,
)
from edgefleet.messages import TelemetryEvent

logger = logging.getLogger(__name__)

CORRUPT_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
BUFFER_BATCHES = 8
"""Batches kept in memory while the disk refuses writes; older ones are dropped."""
MEMORY_RETRY_S = 30.0
"""How often a spool that fell back to memory tries its file again."""


class _Recovery:
    """The opening and recovering half of ``Spool`` (which sets these attributes)."""

    path: Path
    batch_size: int
    wal_limit: int
    recreated: int
    _db: sqlite3.Connection
    _ino: int | None
    _memory_since: float
    _buffer: list[_Pending]
    _handed: dict[str, int]
    _rows: int
    _bytes: int
    _counter: int

    if TYPE_CHECKING:

        def _insert(self, batch: list[_Pending]) -> None: ...
        def _count(self) -> tuple[int, int]: ...

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
