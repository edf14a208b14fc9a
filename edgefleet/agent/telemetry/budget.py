"""A per-device byte budget per day for field samples sent to the control plane.

Field samples are the raw inputs a device saw; over a metered link they cost money
and the operator caps them (``[drift] sample_budget_kib_per_day``). The budget is a
count of bytes spent in the current UTC day, kept in a small JSON file so a restart
does not hand out the day's budget twice; a new day starts at zero.

At the budget a sample is cut to the rows that still fit (the caller offers them
labelled first) and what does not fit is withheld, counted and reported, never
queued for later: the next day starts fresh. A budget file that cannot be read
starts the day at zero again (a warning says so) rather than stopping sampling.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

BUDGET_FILE = "sample_budget.json"


def utc_day(now: float) -> str:
    """The UTC calendar day of a Unix time, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(now, UTC).date().isoformat()


class ByteBudget:
    """Bytes a device may still send today; ``spend`` what was sent."""

    def __init__(
        self,
        per_day: int,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_day = per_day
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._day, self._used = self._load()

    def _load(self) -> tuple[str, int]:
        today = utc_day(self._clock())
        if self._path is None or not self._path.exists():
            return today, 0
        try:
            data = json.loads(self._path.read_text())
            day, used = str(data["day"]), int(data["used"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("sample budget file unreadable, starting at zero reason=%s", e)
            return today, 0
        return (day, max(used, 0)) if day == today else (today, 0)

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self._day:
            self._day, self._used = today, 0

    @property
    def used(self) -> int:
        with self._lock:
            self._roll()
            return self._used

    def remaining(self) -> int:
        """Bytes left today."""
        with self._lock:
            self._roll()
            return max(self.per_day - self._used, 0)

    def spend(self, nbytes: int) -> None:
        """Count ``nbytes`` sent today (and save the count)."""
        with self._lock:
            self._roll()
            self._used += nbytes
            day, used = self._day, self._used
        if self._path is not None:
            try:
                atomic_write(self._path, json.dumps({"day": day, "used": used}).encode())
            except OSError as e:
                logger.warning("sample budget not saved reason=%s", e)
