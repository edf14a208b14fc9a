"""Supervised worker threads: a worker that dies is restarted, and its death is on record.

``Supervisor.start(name, target)`` runs ``target()`` on a thread called ``name``. A
worker is meant to run until it is told to stop (typically a sentinel on its queue).
If ``target`` raises anything — even a ``BaseException`` such as ``SystemExit`` — or
returns while the supervisor is not stopping, that is a death: it is logged with the
exception, counted, kept as the worker's ``last_death_at``/``last_error``, and a new
thread runs ``target()`` again after a short delay. The delay doubles while the
worker keeps dying soon after each start (``min_delay`` up to ``max_delay``), so a
worker that cannot run does not spin; one that stayed up for ``stable_after`` seconds
restarts at once again. ``workers()`` is what health checks and metrics read.

Stopping is two steps, because only the owner knows how to wake its workers:
``stop()`` (no more restarts), then wake them (e.g. a sentinel each), then ``join()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerState:
    """One supervised worker as health checks and metrics see it."""

    name: str
    running: bool
    restarts: int
    last_death_at: datetime | None
    last_error: str | None
    """The exception of the last death (type and message), or why it ended."""

    def troubled(self, *, within: float, now: datetime | None = None) -> bool:
        """Not running, or died less than ``within`` seconds ago."""
        if not self.running:
            return True
        if self.last_death_at is None:
            return False
        return ((now or datetime.now(UTC)) - self.last_death_at).total_seconds() < within


class _Worker:
    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self.target = target
        self.thread: threading.Thread | None = None
        self.timer: threading.Timer | None = None
        self.running = False
        self.started_at = 0.0
        self.restarts = 0
        self.quick_deaths = 0
        self.last_death_at: datetime | None = None
        self.last_error: str | None = None


class Supervisor:
    """Starts named worker threads and restarts any that dies."""

    def __init__(
        self, *, min_delay: float = 0.1, max_delay: float = 10.0, stable_after: float = 60.0
    ) -> None:
        """Configure the restart backoff; no worker runs until ``start``.

        Args:
            min_delay: Seconds before a dead worker's first restart; doubled on every
                further death that comes soon (before ``stable_after``) after a start.
            max_delay: The longest restart delay.
            stable_after: Seconds a worker must stay up for its next death to restart at
                ``min_delay`` again.
        """
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._stopping = False

    def start(self, name: str, target: Callable[[], None]) -> None:
        """Run ``target`` on a supervised thread called ``name``.

        Args:
            name: The thread's name and the worker's key in ``workers()``; unique.
            target: Runs until its owner tells it to stop; returning or raising before
                ``stop()`` is a death, and it is run again.

        Raises:
            ValueError: A worker called ``name`` is already supervised.
        """
        with self._lock:
            if name in self._workers:
                raise ValueError(f"a worker called {name!r} is already supervised")
            worker = self._workers[name] = _Worker(name, target)
        self._spawn(worker)

    def stop(self) -> None:
        """Restart nothing from now on (the owner then wakes its workers and joins)."""
        with self._lock:
            self._stopping = True
            for worker in self._workers.values():
                if worker.timer is not None:
                    worker.timer.cancel()

    def join(self, timeout: float) -> bool:
        """Wait for every worker thread to end, after ``stop()`` and waking the workers.

        Args:
            timeout: Seconds in all, not per thread.

        Returns:
            True if every thread ended in time.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [w.thread for w in self._workers.values() if w.thread is not None]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def workers(self) -> list[WorkerState]:
        """Every worker's state, by name."""
        with self._lock:
            return [
                WorkerState(w.name, w.running, w.restarts, w.last_death_at, w.last_error)
                for _, w in sorted(self._workers.items())
            ]

    # -- internals ---------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        with self._lock:
            if self._stopping:
                return
            worker.timer = None
            worker.thread = threading.Thread(
                target=self._run, args=(worker,), name=worker.name, daemon=True
            )
            worker.running = True
            worker.started_at = time.monotonic()
            worker.thread.start()

    def _run(self, worker: _Worker) -> None:
        error: BaseException | None = None
        try:
            worker.target()
        except BaseException as e:  # top of a supervised thread: any death is recorded
            error = e
        with self._lock:
            worker.running = False
            if self._stopping:
                if error is not None:
                    logger.error(
                        "worker failed while stopping worker=%s", worker.name, exc_info=error
                    )
                return
            if time.monotonic() - worker.started_at >= self.stable_after:
                worker.quick_deaths = 0
            delay = min(self.max_delay, self.min_delay * 2 ** min(worker.quick_deaths, 32))
            worker.quick_deaths += 1
            worker.restarts += 1
            worker.last_death_at = datetime.now(UTC)
            worker.last_error = (
                f"{type(error).__name__}: {error}" if error is not None else "returned"
            )
            worker.timer = threading.Timer(delay, self._spawn, (worker,))
            worker.timer.daemon = True
            worker.timer.start()
        logger.error(
            "worker died, restarting worker=%s restarts=%d delay_s=%.2f error=%s",
            worker.name,
            worker.restarts,
            delay,
            worker.last_error,
            exc_info=error,
        )
