"""Per-arm outcomes, added up from the telemetry the experiment's devices stored.

An event counts for the arm whose bundle it names (``Event.bundle_id``), from a device
of the cohort, since the experiment started: a device's windows before its install, or
on a bundle of neither arm, count for nothing, and a device bandit mode moved counts
for each arm with what it served on it. What each metric reads:

    error_rate  ``inference`` events: ``errors`` of ``count`` requests
    latency_ms  ``inference`` events: the latency histogram (each request at its
                bucket's upper bound, the overflow bucket at twice the last bound)
    accuracy    ``drift`` events carrying ``accuracy`` (``labelled``, ``correct``): the
                labels the application posted as feedback; absent, the metric is empty
    outcome     ``outcome`` events: ``count``, ``sum``, ``sum_sq`` of the numbers the
                application posted to ``/v2/models/<name>/outcome``

A device may send anything in ``data``: a field that is not a finite, non-negative
number (or a histogram of the wrong shape) makes its event count for nothing on that
metric, never fails the pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import Event, Experiment
from edgefleet.control_plane.services.experiments.statistics import ArmSummary

METRICS = ("error_rate", "latency_ms", "accuracy", "outcome")
PROPORTIONS = frozenset({"error_rate", "accuracy"})
ACCURACY_KINDS = ("drift",)  # where the agent reports labelled accuracy per window
KINDS = ("inference", "outcome", *ACCURACY_KINDS)
MAX_HISTOGRAM_BUCKETS = 64


@dataclass
class Tally:
    """Running sums of one metric on one arm."""

    n: float = 0.0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, n: float, total: float, total_sq: float) -> None:
        self.n += n
        self.total += total
        self.total_sq += total_sq


@dataclass
class ArmOutcomes:
    """One arm's tallies, one per metric, and the devices that reported on it."""

    tallies: dict[str, Tally] = field(default_factory=lambda: {m: Tally() for m in METRICS})
    devices: set[str] = field(default_factory=set)

    def summary(self, metric: str) -> ArmSummary:
        tally = self.tallies[metric]
        if metric in PROPORTIONS:
            return ArmSummary.from_proportion(tally.n, tally.total)
        return ArmSummary.from_sums(tally.n, tally.total, tally.total_sq)


def _number(value: Any) -> float | None:
    """A finite, non-negative JSON number, else None (``True`` is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def add_event(arm: ArmOutcomes, kind: str, data: Any) -> None:
    """Add what one stored event says to ``arm``'s tallies (see the module docstring)."""
    if not isinstance(data, dict):
        return
    if kind == "inference":
        count, errors = _number(data.get("count")), _number(data.get("errors"))
        if count is not None and errors is not None and errors <= count:
            arm.tallies["error_rate"].add(count, errors, errors)
        _add_histogram(arm.tallies["latency_ms"], data.get("histogram"))
    elif kind == "outcome":
        count, total = _number(data.get("count")), data.get("sum")
        total_sq = _number(data.get("sum_sq"))
        if (
            count is not None
            and total_sq is not None
            and isinstance(total, int | float)
            and not isinstance(total, bool)
            and math.isfinite(total)
        ):
            arm.tallies["outcome"].add(count, float(total), total_sq)
    if kind in ACCURACY_KINDS:
        accuracy = data.get("accuracy")
        if isinstance(accuracy, dict):
            labelled, correct = _number(accuracy.get("labelled")), _number(accuracy.get("correct"))
            if labelled is not None and correct is not None and correct <= labelled:
                arm.tallies["accuracy"].add(labelled, correct, correct)


def _add_histogram(tally: Tally, histogram: Any) -> None:
    if not isinstance(histogram, dict):
        return
    bounds, counts = histogram.get("bounds_ms"), histogram.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list):
        return
    if not 0 < len(bounds) < MAX_HISTOGRAM_BUCKETS or len(counts) != len(bounds) + 1:
        return
    values = [_number(b) for b in bounds]
    numbers = [_number(c) for c in counts]
    if any(v is None for v in values) or any(c is None for c in numbers):
        return
    points = [float(v) for v in values if v is not None] + [2.0 * float(values[-1] or 0.0)]
    weights = [float(c) for c in numbers if c is not None]
    tally.add(
        sum(weights),
        sum(w * p for w, p in zip(weights, points, strict=True)),
        sum(w * p * p for w, p in zip(weights, points, strict=True)),
    )


def gather_outcomes(
    *,
    session: Session,
    experiment: Experiment,
    since: datetime | None = None,
    by_device: dict[str, dict[str, ArmOutcomes]] | None = None,
) -> dict[str, ArmOutcomes]:
    """Arm ``"A"`` and arm ``"B"``'s outcomes from the cohort's events since the start.

    One query over the cohort's events of the kinds read, streamed (``yield_per``), so
    a long experiment costs a scan, not memory. Events are told apart by the bundle
    they are about, so in ``requests`` mode, where one device serves both arms, each
    arm reads its own windows of the same devices. ``by_device``, when given, is
    filled with each device's own arms too (bandit mode in ``requests`` mode moves
    the share per device).
    """
    arms = {"A": ArmOutcomes(), "B": ArmOutcomes()}
    by_bundle = {experiment.bundle_a: arms["A"], experiment.bundle_b: arms["B"]}
    cohort = sorted(experiment.assignments or {})
    if not cohort:
        return arms
    query = (
        select(Event.device_id, Event.kind, Event.bundle_id, Event.data)
        .where(col(Event.device_id).in_(cohort))
        .where(col(Event.kind).in_(KINDS))
        .where(col(Event.bundle_id).in_(list(by_bundle)))
        .where(col(Event.ts) >= (since or experiment.started_at))
        .execution_options(yield_per=1000)
    )
    for device_id, kind, bundle_id, data in session.exec(query):
        arm = by_bundle.get(bundle_id or "")
        if arm is not None:
            arm.devices.add(device_id)
            add_event(arm, kind, data)
            if by_device is not None:
                name = "A" if arm is arms["A"] else "B"
                own = by_device.setdefault(device_id, {"A": ArmOutcomes(), "B": ArmOutcomes()})
                own[name].devices.add(device_id)
                add_event(own[name], kind, data)
    return arms
