"""Inference counts and latency histograms per window, and the probation health rule.

Each request costs the request path one ``deque.append`` of a (bundle id, latency,
succeeded) tuple (``InferenceStats.record``: atomic, no lock, no Python-level call);
on a 16 µs model the lock and histogram bucket it replaced added ~10 %. The
forwarder thread folds what was recorded into the windows every tick
(``InferenceStats.fold``, vectorised). Two windows are kept: the telemetry window,
handed over and reset every ``window_s`` as an ``inference`` event, and the
probation window of each bundle under probation, which the health rule judges. Each
bundle also keeps its own telemetry window: an agent hosts several models.
"""

from __future__ import annotations

import bisect
import os
import shutil
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet import schema
from edgefleet.agent.config import ProbationConfig
from edgefleet.messages import InstallReport, TelemetryEvent

BOUNDS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_BOUNDS = np.asarray(BOUNDS_MS)
INFERENCE_PRIORITY = 2
RESOURCE_PRIORITY = 3
INSTALL_PRIORITY = 0
ERROR_PRIORITY = 1


@dataclass
class LatencyWindow:
    """Counts, errors and a fixed-bucket latency histogram (last bucket: above 5 s)."""

    count: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))

    def add(self, latency_ms: float, ok: bool) -> None:
        self.count += 1
        if not ok:
            self.errors += 1
        self.buckets[bisect.bisect_left(BOUNDS_MS, latency_ms)] += 1

    def add_counts(self, buckets: np.ndarray, errors: int) -> None:
        """Add a histogram (``len(BOUNDS_MS) + 1`` counts) and its error count."""
        self.count += int(buckets.sum())
        self.errors += errors
        for i, n in enumerate(buckets.tolist()):
            self.buckets[i] += n

    def percentile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (conservative)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return BOUNDS_MS[i] if i < len(BOUNDS_MS) else float("inf")
        return float("inf")

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def to_data(self, window_s: float) -> dict[str, Any]:
        return {
            "window_s": window_s,
            "count": self.count,
            "errors": self.errors,
            "latency_ms": {
                "p50": self.percentile(0.5),
                "p95": self.percentile(0.95),
                "p99": self.percentile(0.99),
            },
            "histogram": {"bounds_ms": list(BOUNDS_MS), "counts": list(self.buckets)},
        }


Observation = tuple[str, float, bool]
"""(bundle id, latency in ms, succeeded) of one request."""


class InferenceStats:
    """Thread-safe per-request observations for telemetry and probation.

    ``record`` is the bound ``append`` of a deque (thread-safe in CPython); every
    reader folds first, so each observation lands in the windows exactly once.
    """

    def __init__(self) -> None:
        self._pending: deque[Observation] = deque()
        self.record = self._pending.append
        self._lock = threading.Lock()
        self._window = LatencyWindow()
        self._by_bundle: dict[str, LatencyWindow] = {}
        self._probation: dict[str, LatencyWindow] = {}

    def fold(self) -> int:
        """Move what was recorded into the windows; returns how many observations."""
        with self._lock:
            pending = self._pending
            taken = [pending.popleft() for _ in range(len(pending))]
            if not taken:
                return 0
            bundles, latencies, oks = zip(*taken, strict=True)
            buckets = np.searchsorted(_BOUNDS, np.asarray(latencies), side="left")
            failed = ~np.asarray(oks, dtype=bool)
            self._add(self._window, buckets, failed)
            names = np.asarray(bundles, dtype=object)
            for bundle in set(bundles):
                # An agent hosts several models: each bundle's requests are its own
                # window (telemetry per bundle) and its own probation.
                mine = names == bundle
                window = self._by_bundle.setdefault(bundle, LatencyWindow())
                self._add(window, buckets[mine], failed[mine])
                if bundle in self._probation:
                    self._add(self._probation[bundle], buckets[mine], failed[mine])
        return len(taken)

    @staticmethod
    def _add(window: LatencyWindow, buckets: np.ndarray, failed: np.ndarray) -> None:
        window.add_counts(np.bincount(buckets, minlength=len(BOUNDS_MS) + 1), int(failed.sum()))

    def take_window(self) -> LatencyWindow:
        """The telemetry window so far, every bundle together; a fresh one starts."""
        self.fold()
        with self._lock:
            window, self._window = self._window, LatencyWindow()
            self._by_bundle = {}
        return window

    def take_windows(self) -> dict[str, LatencyWindow]:
        """The telemetry window so far of each bundle that answered; fresh ones start."""
        self.fold()
        with self._lock:
            windows, self._by_bundle = self._by_bundle, {}
            self._window = LatencyWindow()
        return windows

    def start_probation(self, bundle_id: str | None) -> None:
        """Judge ``bundle_id``'s requests from now on (None: end every probation)."""
        self.fold()  # what was served before this belongs to the telemetry window only
        with self._lock:
            if bundle_id is None:
                self._probation = {}
            else:
                self._probation[bundle_id] = LatencyWindow()

    def end_probation(self, bundle_id: str) -> None:
        """Stop judging ``bundle_id`` (committed or rolled back)."""
        with self._lock:
            self._probation.pop(bundle_id, None)

    def probation_window(self, bundle_id: str | None = None) -> LatencyWindow:
        """The requests ``bundle_id`` answered on probation (default: the only one)."""
        self.fold()
        with self._lock:
            if bundle_id is None:
                bundle_id = next(iter(self._probation), None)
            window = self._probation.get(bundle_id) if bundle_id is not None else None
            if window is None:
                return LatencyWindow()
            return LatencyWindow(window.count, window.errors, list(window.buckets))


def probation_breach(window: LatencyWindow, rule: ProbationConfig) -> str | None:
    """Why ``window`` breaks the health rule, with the numbers; None while healthy."""
    if window.count < rule.min_requests:
        return None
    if window.error_rate > rule.max_error_rate:
        return (
            f"probation breach: error rate {window.error_rate:.3f} > {rule.max_error_rate} "
            f"({window.errors} of {window.count} requests)"
        )
    p95 = window.percentile(0.95)
    if p95 > rule.max_p95_ms:
        return (
            f"probation breach: latency p95 {p95:g} ms > {rule.max_p95_ms:g} ms "
            f"over {window.count} requests"
        )
    return None


def inference_event(
    window: LatencyWindow, window_s: float, bundle_id: str | None, release: int | None
) -> TelemetryEvent:
    return TelemetryEvent(
        kind="inference",
        priority=INFERENCE_PRIORITY,
        bundle_id=bundle_id,
        release=release,
        data=window.to_data(window_s),
    )


def install_event(report: InstallReport) -> TelemetryEvent:
    """An install report, kept durably as telemetry (the report itself may be missed)."""
    return TelemetryEvent(
        kind="install",
        priority=INSTALL_PRIORITY,
        bundle_id=report.bundle_id,
        release=report.release,
        data=schema.to_builtins(report, omit_none=True),
    )


def resource_event(data_dir: Path) -> TelemetryEvent:
    """RSS of this process, CPU use since start and free disk under ``data_dir``."""
    rss_mib = 0.0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_mib = int(line.split()[1]) / 1024
    except OSError:
        pass
    times = os.times()
    try:
        free = shutil.disk_usage(data_dir).free / 2**20
    except OSError:
        free = -1.0
    return TelemetryEvent(
        kind="resource",
        priority=RESOURCE_PRIORITY,
        data={
            "rss_mib": round(rss_mib, 1),
            "cpu_seconds": round(times.user + times.system, 2),
            "disk_free_mib": round(free, 1),
        },
    )
