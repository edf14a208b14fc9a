"""A link budget for devices on metered connections: bytes per second, and a cap per day.

``BudgetedTransport`` wraps the agent's transport (mirrors, blobs, request/response)
and charges every byte that came over the network to a ``LinkBudget``: it paces the
download to ``bytes_per_s`` (a token bucket holding one second's worth), and refuses
to go on once ``bytes_per_day`` are spent, with ``TransferError`` status 429 and a
reason that says so; the install fails with that reason and the partial download
stays for the next day (it resumes where it stopped). Bytes replayed from a ``.part``
file are not charged: they came over the link on an earlier day.

The day is the UTC date. What was spent is kept in ``<data_dir>/link-budget.json``,
written at most every ``PERSIST_EVERY`` bytes and when a download ends, so an agent
killed mid-download under-counts by at most that much. The cap is checked before a
download starts and after each chunk, so a day may end up to one chunk over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.agent.errors import TransferError
from edgefleet.agent.verification.fetcher import part_file
from edgefleet.agent.verification.transport import Transport
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

STATE_FILE = "link-budget.json"
PERSIST_EVERY = 1024 * 1024
OVER_BUDGET = 429


def _utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()


class LinkBudget:
    """How fast, and how much per day, the agent may download.

    Args:
        data_dir: where the day's spending is kept.
        bytes_per_s: the pace; None for no limit.
        bytes_per_day: the daily cap; None for no cap.
        clock: wall-clock seconds (the day) and the pace's time base.
        sleep: how pacing waits.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        bytes_per_s: int | None = None,
        bytes_per_day: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = Path(data_dir) / STATE_FILE
        self.bytes_per_s = bytes_per_s
        self.bytes_per_day = bytes_per_day
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._day, self._used = self._load()
        self._persisted = self._used
        self._tokens = float(bytes_per_s or 0)
        self._filled_at = clock()

    def _load(self) -> tuple[str, int]:
        today = _utc_day(self._clock())
        try:
            state = json.loads(self.path.read_bytes())
            day, used = str(state["day"]), int(state["used"])
        except (OSError, ValueError, KeyError, TypeError):
            return today, 0
        return (day, used) if day == today else (today, 0)

    def used_today(self) -> int:
        """Bytes charged on the current UTC day."""
        with self._lock:
            self._roll_day()
            return self._used

    def _roll_day(self) -> None:
        today = _utc_day(self._clock())
        if today != self._day:
            self._day, self._used, self._persisted = today, 0, -1

    def check(self, what: str) -> None:
        """Refuse (``TransferError`` 429) when the day's cap is spent."""
        with self._lock:
            self._roll_day()
            if self.bytes_per_day is not None and self._used >= self.bytes_per_day:
                self._persist()
                raise TransferError(
                    f"{what}: the link budget of {self.bytes_per_day} bytes per day is spent "
                    f"({self._used} bytes on {self._day} UTC); the download resumes tomorrow",
                    status=OVER_BUDGET,
                )

    def charge(self, n: int) -> None:
        """Count ``n`` bytes that came over the link, waiting as the pace requires."""
        wait = 0.0
        with self._lock:
            self._roll_day()
            self._used += n
            if self._used - self._persisted >= PERSIST_EVERY:
                self._persist()
            if self.bytes_per_s:
                now = self._clock()
                rate = float(self.bytes_per_s)
                self._tokens = min(rate, self._tokens + (now - self._filled_at) * rate) - n
                self._filled_at = now
                if self._tokens < 0:
                    wait = -self._tokens / rate
        if wait > 0:
            self._sleep(wait)

    def flush(self) -> None:
        """Write the day's spending out now (a download ended)."""
        with self._lock:
            self._persist()

    def _persist(self) -> None:
        if self._persisted == self._used:
            return
        try:
            atomic_write(self.path, json.dumps({"day": self._day, "used": self._used}).encode())
        except OSError as e:
            logger.warning("link budget not saved path=%s reason=%s", self.path, e)
            return
        self._persisted = self._used


class BudgetedTransport:
    """``transport`` with every byte from the network charged to ``budget``.

    Args:
        transport: the agent's transport.
        budget: the link budget.
        part_dir: where partial downloads are kept (their replayed bytes are free).
    """

    def __init__(self, transport: Transport, budget: LinkBudget, part_dir: Path | None) -> None:
        self.transport = transport
        self.budget = budget
        self.part_dir = part_dir

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """``transport.stream``, paced and capped.

        Raises:
            TransferError: status 429 (at once, or while iterating) when the day's cap
                is spent; else as the wrapped transport.
        """
        self.budget.check(path)
        part = part_file(self.part_dir, path)
        free = part.stat().st_size if part is not None and part.exists() else 0
        return self._charged(path, self.transport.stream(path, max_length), free)

    def _charged(self, path: str, chunks: Iterator[bytes], free: int) -> Iterator[bytes]:
        try:
            for chunk in chunks:
                paid = len(chunk) - min(free, len(chunk))
                free -= len(chunk) - paid
                yield chunk
                if paid:
                    self.budget.charge(paid)
                    self.budget.check(path)
        finally:
            self.budget.flush()
            close = getattr(chunks, "close", None)
            if callable(close):
                with contextlib.suppress(TransferError):
                    close()

    def discard_parts(self) -> None:
        """Forget the wrapped transport's partial downloads (one failed its hash check)."""
        discard = getattr(self.transport, "discard_parts", None)
        if callable(discard):
            discard()
