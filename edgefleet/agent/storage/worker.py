"""The disk worker: watches free space for the spool, measures usage, collects garbage.

One supervised thread (``edgefleet.supervisor``; its restarts show in the status file)
does, every ``[disk] watch_interval_s``:

* **the spool's cap**: the spool may take its share of the budget, but never the
  filesystem's last ``reserve_mb``: when something else fills the disk (a file written
  beside the agent, another program's log), the cap drops to what the spool holds now
  less what is missing from the reserve, and the spool's own overflow policy (highest
  priority number first, oldest first, every drop counted in its summary) makes room.
  When space comes back, the cap returns to the share. Deleting rows needs a little
  free space itself (SQLite's write-ahead log), which is what the reserve is for.
* **usage per use**, kept for ``edgefleet-agent status`` (the data dir is walked here,
  not on the status file's one-second tick);

and on start and every ``[disk] gc_interval_s`` a garbage collection
(``edgefleet.agent.storage.gc``), under the install worker's job lock, skipped while an
install runs and tried again on the next watch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.storage.budget import DiskBudget, DiskUsage
from edgefleet.agent.storage.gc import Collected, collect_garbage

logger = logging.getLogger(__name__)

SPOOL_SLACK = 160 * 1024
"""Bytes a lowered spool cap leaves for SQLite's own pages and write-ahead log."""


class CappedSpool(Protocol):
    """What the worker needs of the spool (``edgefleet.agent.telemetry.spool.Spool``)."""

    def disk_bytes(self) -> int: ...

    def limit(self, max_bytes: int) -> int: ...


def spool_cap(configured: int, spool_bytes: int, free: int, reserve: int) -> int:
    """The spool's cap now: ``configured``, unless the filesystem's free space is short
    of ``reserve``, then what the spool holds less the shortfall and its own slack."""
    headroom = free - reserve
    if headroom >= configured:
        return configured
    return max(0, min(configured, spool_bytes + headroom - SPOOL_SLACK))


class DiskWorker:
    """Runs the watch and the collections; ``run`` is the supervised target."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        spool: CappedSpool,
        spool_cap_bytes: int,
        job_lock: threading.Lock,
        shadow_running: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.budget = DiskBudget(config.data_dir, config.disk)
        self.spool = spool
        self.spool_cap_bytes = spool_cap_bytes
        self.job_lock = job_lock
        self.shadow_running = shadow_running
        self.clock = clock
        self.stop_event = threading.Event()
        self.cap_now = spool_cap_bytes
        self.last_usage: DiskUsage | None = None
        self.last_gc: Collected | None = None
        self.gc_runs = 0
        self.freed_total = 0
        self._next_gc = 0.0  # on start

    def run(self) -> None:
        """Watch and collect until ``stop``; an error escapes to the supervisor."""
        while not self.stop_event.is_set():
            self.watch()
            if self.clock() >= self._next_gc and self.collect():
                self._next_gc = self.clock() + self.config.disk.gc_interval_s
            self.stop_event.wait(self.config.disk.watch_interval_s)

    def stop(self) -> None:
        self.stop_event.set()

    def watch(self) -> DiskUsage:
        """Measure every use and set the spool's cap for the free space there is."""
        usage = self.budget.usage()
        cap = spool_cap(self.spool_cap_bytes, self.spool.disk_bytes(), usage.free,
                        self.budget.reserve)  # fmt: skip
        applied = self.spool.limit(cap)
        lowered = applied < self.spool_cap_bytes
        if lowered != (self.cap_now < self.spool_cap_bytes):  # said when it starts and ends
            logger.warning(
                "spool cap %s cap_bytes=%d free_bytes=%d reserve_bytes=%d",
                "lowered: disk short of its reserve" if lowered else "back to its share",
                applied,
                usage.free,
                self.budget.reserve,
            )
        self.cap_now = applied
        self.last_usage = usage
        return usage

    def collect(self) -> bool:
        """One garbage collection, unless an install job runs (then False: try later)."""
        if not self.job_lock.acquire(blocking=False):
            logger.debug("gc postponed: an install job runs")
            return False
        try:
            collected = collect_garbage(
                self.config.data_dir,
                part_grace_s=self.config.disk.part_grace_s,
                shadow_running=self.shadow_running(),
            )
        finally:
            self.job_lock.release()
        self.last_gc = collected
        self.gc_runs += 1
        self.freed_total += collected.freed
        return True

    def status(self) -> dict[str, object]:
        """The ``disk`` part of the status file."""
        usage = self.last_usage
        return {
            **(usage.to_dict() if usage else {}),
            "spool_cap_bytes": self.cap_now,
            "gc_runs": self.gc_runs,
            "gc_freed_bytes": self.freed_total,
            "gc_last_removed": list(self.last_gc.removed[:20]) if self.last_gc else [],
        }
