"""The agent's recent log, kept on disk in a bounded ring and served on request.

``LogStore`` is a ``logging.Handler`` that writes each record as one JSON line
(``ts``, ``level``, ``logger``, ``message``) to ``<data_dir>/logs/agent.log``. Once the
file passes half of ``max_bytes`` it becomes ``agent.log.1`` (replacing the one before)
and a new file starts, so the two files never hold much more than ``max_bytes``
together, and the log survives the agent restarting. Messages longer than
``LOG_LINE_MAX_CHARS`` are cut and say so. A line torn by a power cut is skipped when
read.

``read`` selects the records of the last ``since_s`` seconds, newest first until
``max_bytes`` is reached, and counts what it left out. ``LogResponder`` answers a
``LogRequest`` on its own thread with ``LogChunk`` messages no larger than
``LOG_CHUNK_BYTES`` of records each.

The agent logs no credentials (it never logs a payload or a password), so the ring
holds none either; it is still only handed to the control plane, on request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgefleet.messages import (
    LOG_CHUNK_BYTES,
    LOG_LINE_MAX_CHARS,
    LOG_MESSAGE_MAX_CHARS,
    LogChunk,
    LogRecord,
    LogRequest,
)

logger = logging.getLogger(__name__)

LOG_DIR = "logs"
LOG_FILE = "agent.log"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
PENDING_REQUESTS = 4
"""Log requests queued at most; more are dropped (the control plane times out)."""


def cap_message(message: str, limit: int = LOG_LINE_MAX_CHARS) -> str:
    """``message``, cut to ``limit`` characters with a note of how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]} ... [{len(message) - limit} more chars cut]"


@dataclass
class LogSelection:
    """What ``LogStore.read`` picked: records oldest first, their sizes, what it left out."""

    records: list[LogRecord] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    omitted: int = 0


class LogStore(logging.Handler):
    """A bounded on-disk ring of the agent's log records (see the module docstring)."""

    def __init__(
        self, data_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, level: int = logging.INFO
    ) -> None:
        super().__init__(level)
        self.directory = Path(data_dir) / LOG_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / LOG_FILE
        self.previous = self.directory / f"{LOG_FILE}.1"
        self.max_bytes = max_bytes
        self.dropped = 0
        """Records not written because the disk refused them (a full disk, say)."""
        self._file: IO[bytes] | None = None
        self._files = threading.Lock()  # the files, between a write's rotation and a read

    # -- writing ----------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            line = json.dumps(
                {
                    "ts": round(record.created, 3),
                    "level": record.levelname[:16],
                    "logger": record.name[:200],
                    "message": cap_message(message),
                },
                ensure_ascii=False,
            )
            with self._files:
                try:
                    self._write(line.encode("utf-8", "replace") + b"\n")
                except OSError:  # a full disk: the ring loses this record, counted
                    self.dropped += 1
                    self._drop_file()
        except Exception:  # a handler must never raise into the code that logged
            self.handleError(record)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self.path.open("ab")
        self._file.write(data)
        self._file.flush()
        if self._file.tell() > self.max_bytes // 2:
            self._file.close()
            self._file = None
            os.replace(self.path, self.previous)

    def _drop_file(self) -> None:
        """After a refused write: close the file (a torn last line is skipped on read)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        with self._files:
            if self._file is not None:
                self._file.close()
                self._file = None
        super().close()

    # -- reading ----------------------------------------------------------------------------

    def read(self, *, since_s: float, max_bytes: int, now: float | None = None) -> LogSelection:
        """The records of the last ``since_s`` seconds, the newest that fit in ``max_bytes``.

        Sizes are the records' JSON lines, about what they take on the wire.
        """
        cutoff = (time.time() if now is None else now) - since_s
        window: list[tuple[LogRecord, int]] = []
        with self._files:  # not while a rotation moves the files
            lines = [line for path in (self.previous, self.path) for line in _lines(path)]
        for line in lines:
            record = _parse(line)
            if record is not None and record.ts >= cutoff:
                window.append((record, len(line) + 1))
        kept = 0
        total = 0
        for _record, size in reversed(window):
            if total + size > max_bytes:
                break
            total += size
            kept += 1
        chosen = window[len(window) - kept :]
        return LogSelection(
            records=[r for r, _ in chosen],
            sizes=[s for _, s in chosen],
            omitted=len(window) - kept,
        )


def _lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except FileNotFoundError:
        return []


def _parse(line: bytes) -> LogRecord | None:
    """One stored line as a record; None for a torn or foreign line."""
    try:
        raw = json.loads(line)
        message = str(raw["message"])
        if len(message) > LOG_MESSAGE_MAX_CHARS:  # written by something else than ``emit``
            message = cap_message(message)
        return LogRecord(
            ts=float(raw["ts"]),
            level=str(raw["level"])[:16],
            logger=str(raw["logger"])[:200],
            message=message,
        )
    except (ValueError, KeyError, TypeError):
        return None


def log_chunks(request: LogRequest, selection: LogSelection) -> list[LogChunk]:
    """The answer to ``request``: ``selection`` in chunks of at most ``LOG_CHUNK_BYTES``."""
    groups: list[list[LogRecord]] = [[]]
    size = 0
    for record, record_size in zip(selection.records, selection.sizes, strict=True):
        if groups[-1] and size + record_size > LOG_CHUNK_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(record)
        size += record_size
    return [
        LogChunk(
            request_id=request.request_id,
            seq=seq,
            last=seq == len(groups) - 1,
            records=records,
            truncated=selection.omitted > 0,
            omitted=selection.omitted,
        )
        for seq, records in enumerate(groups)
    ]


class LogResponder:
    """Answers log requests on a thread of its own (the MQTT network thread only queues)."""

    def __init__(self, store: LogStore, publish: Callable[[LogChunk], None]) -> None:
        self._store = store
        self._publish = publish
        self._requests: queue.Queue[LogRequest | None] = queue.Queue(PENDING_REQUESTS)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent-logs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._requests.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, request: LogRequest) -> None:
        """Network thread: queue ``request``; dropped when too many wait already."""
        try:
            self._requests.put_nowait(request)
        except queue.Full:
            logger.warning("log request dropped request_id=%s reason=busy", request.request_id)

    def answer(self, request: LogRequest) -> int:
        """Read and publish the answer to ``request`` now; the number of chunks sent."""
        selection = self._store.read(since_s=request.since_s, max_bytes=request.max_bytes)
        chunks = log_chunks(request, selection)
        for chunk in chunks:
            self._publish(chunk)
        logger.info(
            "log request answered request_id=%s records=%d omitted=%d chunks=%d",
            request.request_id,
            len(selection.records),
            selection.omitted,
            len(chunks),
        )
        return len(chunks)

    def _run(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                self.answer(request)
            except Exception:  # top of the responder loop: the next request still runs
                logger.exception("log request failed request_id=%s", request.request_id)
