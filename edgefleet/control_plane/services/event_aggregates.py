"""Per-wave telemetry aggregates: summed at ingest, read by the rollout gates.

A wave's gates used to scan every ``inference`` and ``shadow`` event of the rollout's
devices since the wave began: at millions of stored events that scan was the cost of
each orchestrator pass. Instead, each burst of newly stored events adds to counters per
``(rollout, wave, bundle, kind, minute)`` (``EventAggregate``, with latency histogram
buckets in ``EventHistogramBucket``) and records which device reported about which bundle
(``RolloutReporter``), in the burst's own transaction: an event counts exactly when it is
stored, so a redelivery counts nothing. The gates read a few rows per soaked minute.

Only rollouts that are running (``in_progress`` or ``paused``) collect: gates are judged
then, and a finished rollout's view keeps what it was judged on. Sums use the same
reading of a device's numbers as ``gates`` (anything that is not a number counts 0), and
every upsert adds to the stored row, so two replicas adding to one row both count.

What the minute grain changes against the raw scan: events from the minute a wave
started count from that minute's start (at most 59 s before the wave began), and
windows whose histograms have different bounds are merged bucket by bucket rather than
falling back to the weighted mean of their p95s, and a wave's windows count by the wave
the device was placed in, whatever its row's state (the scan skipped devices whose row
was pending, superseded or cancelled; such devices rarely run the candidate).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import (
    EventAggregate,
    EventHistogramBucket,
    Rollout,
    RolloutDevice,
    RolloutReporter,
)
from edgefleet.states.rollout import RUNNING_ROLLOUT_STATES

__all__ = [
    "GATE_KINDS",
    "AggregatedEvent",
    "WaveTelemetry",
    "add_to_aggregates",
    "num",
    "read_wave_telemetry",
]

GATE_KINDS = frozenset({"inference", "shadow"})
"""The kinds the gates read; no other kind is aggregated."""

AggregateKey = tuple[int, int, str, str, datetime]
"""``(rollout_id, wave, bundle_id, kind, minute)``."""


@dataclass(frozen=True)
class AggregatedEvent:
    """What aggregation needs of one newly stored event."""

    device_id: str
    kind: str
    bundle_id: str | None
    ts: datetime
    data: dict[str, Any]


def num(value: Any) -> float:
    """A device's number as a float; anything else (text, null, NaN, inf) counts 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) else 0.0


@dataclass
class _Sums:
    events: int = 0
    inferences: float = 0.0
    errors: float = 0.0
    p95_weighted: float = 0.0
    agreement_weighted: float = 0.0
    unhistogrammed: int = 0
    window_s: float = 0.0
    buckets: defaultdict[float, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, kind: str, data: dict[str, Any]) -> None:
        count = num(data.get("count"))
        latency = data.get("latency_ms")
        p95 = num(latency.get("p95")) if isinstance(latency, dict) else 0.0
        self.events += 1
        self.inferences += count
        self.errors += num(data.get("errors"))
        self.p95_weighted += count * p95
        self.agreement_weighted += count * num(data.get("agreement"))
        self.window_s = max(self.window_s, num(data.get("window_s")))
        if count > 0 and not (kind == "inference" and self._add_histogram(data)):
            self.unhistogrammed += 1

    def _add_histogram(self, data: dict[str, Any]) -> bool:
        """Add the window's histogram buckets; False when it has none the gates could use."""
        histogram = data.get("histogram")
        if not isinstance(histogram, dict):
            return False
        bounds, counts = histogram.get("bounds_ms"), histogram.get("counts")
        if not (isinstance(bounds, list) and bounds and isinstance(counts, list) and counts):
            return False
        edges = [num(b) for b in bounds]
        for i, n in enumerate(counts):
            if num(n) > 0:  # empty buckets are not stored
                self.buckets[edges[i] if i < len(edges) else edges[-1] * 2] += num(n)
        return True


def _minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _about(event: AggregatedEvent) -> str | None:
    """The bundle a window is about: a shadow window names the candidate it shadowed."""
    if event.kind == "shadow":
        about = event.data.get("bundle_id")
        return about if isinstance(about, str) else event.bundle_id
    return event.bundle_id


def add_to_aggregates(*, session: Session, events: Sequence[AggregatedEvent]) -> int:
    """Add newly stored ``events`` to their running rollouts' aggregates (uncommitted).

    Call it in the transaction that stored the events, with only the events that were
    new, so that each is counted once. Returns how many aggregate rows were touched.
    """
    wanted = [e for e in events if e.kind in GATE_KINDS and _about(e) is not None]
    if not wanted:
        return 0
    devices = sorted({e.device_id for e in wanted})
    memberships: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    rows = session.exec(
        select(RolloutDevice.device_id, RolloutDevice.rollout_id, RolloutDevice.wave)
        .join(Rollout, col(Rollout.id) == RolloutDevice.rollout_id)
        .where(col(Rollout.state).in_(RUNNING_ROLLOUT_STATES))
        .where(col(RolloutDevice.device_id).in_(devices))
    ).all()
    for device_id, rollout_id, wave in rows:
        memberships[device_id].append((rollout_id, wave))
    if not memberships:
        return 0
    sums: defaultdict[AggregateKey, _Sums] = defaultdict(_Sums)
    reporters: dict[tuple[int, str, str, str], datetime] = {}
    for event in wanted:
        about = _about(event)
        assert about is not None
        for rollout_id, wave in memberships.get(event.device_id, ()):
            sums[(rollout_id, wave, about, event.kind, _minute(event.ts))].add(
                event.kind, event.data
            )
            key = (rollout_id, event.device_id, about, event.kind)
            reporters[key] = max(reporters.get(key, event.ts), event.ts)
    _upsert_sums(session, sums)
    _upsert_reporters(session, reporters)
    return len(sums)


def _insert_for(session: Session) -> Callable[[Any], Any]:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _greatest(session: Session) -> Callable[..., Any]:
    """Two-argument maximum: ``greatest`` on PostgreSQL, the scalar ``max`` on SQLite."""
    return func.greatest if session.get_bind().dialect.name == "postgresql" else func.max


def _upsert_sums(session: Session, sums: dict[AggregateKey, _Sums]) -> None:
    """Add ``sums`` to the stored rows, keys in one order so replicas lock alike."""
    insert = _insert_for(session)
    greatest = _greatest(session)
    keys = sorted(sums)
    names = ("rollout_id", "wave", "bundle_id", "kind", "minute")
    aggregate: Table = EventAggregate.__table__  # type: ignore[attr-defined]
    values = [
        dict(zip(names, key, strict=True))
        | {
            "events": s.events,
            "inferences": s.inferences,
            "errors": s.errors,
            "p95_weighted": s.p95_weighted,
            "agreement_weighted": s.agreement_weighted,
            "unhistogrammed": s.unhistogrammed,
            "window_s": s.window_s,
        }
        for key in keys
        for s in (sums[key],)
    ]
    statement = insert(aggregate)
    added = {
        name: aggregate.c[name] + statement.excluded[name]
        for name in (
            "events",
            "inferences",
            "errors",
            "p95_weighted",
            "agreement_weighted",
            "unhistogrammed",
        )
    }
    added["window_s"] = greatest(aggregate.c.window_s, statement.excluded.window_s)
    # Statements without their values are compiled once and cached; the rows go as
    # multi-row VALUES batches.
    session.execute(statement.on_conflict_do_update(index_elements=list(names), set_=added), values)
    buckets = [
        dict(zip(names, key, strict=True)) | {"bound_ms": bound, "inferences": n}
        for key in keys
        for bound, n in sorted(sums[key].buckets.items())
    ]
    if buckets:
        table: Table = EventHistogramBucket.__table__  # type: ignore[attr-defined]
        bucket_statement = insert(table)
        session.execute(
            bucket_statement.on_conflict_do_update(
                index_elements=[*names, "bound_ms"],
                set_={"inferences": table.c.inferences + bucket_statement.excluded.inferences},
            ),
            buckets,
        )


def _upsert_reporters(
    session: Session, reporters: dict[tuple[int, str, str, str], datetime]
) -> None:
    insert = _insert_for(session)
    table: Table = RolloutReporter.__table__  # type: ignore[attr-defined]
    values = [
        {"rollout_id": r, "device_id": d, "bundle_id": b, "kind": k, "last_ts": ts}
        for (r, d, b, k), ts in sorted(reporters.items())
    ]
    statement = insert(table)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["rollout_id", "device_id", "bundle_id", "kind"],
            set_={"last_ts": _greatest(session)(table.c.last_ts, statement.excluded.last_ts)},
        ),
        values,
    )


@dataclass(frozen=True)
class WaveTelemetry:
    """A wave's telemetry as the gates take it: windows summed into one per group."""

    candidate: list[dict[str, Any]]
    baseline: list[dict[str, Any]]
    shadow: list[dict[str, Any]]
    reporters: set[str]  # devices that reported about the rollout's bundle since ``since``


@dataclass
class _Group:
    """The summed aggregate rows of one ``(wave, bundle, kind)``."""

    inferences: float = 0.0
    errors: float = 0.0
    p95_weighted: float = 0.0
    agreement_weighted: float = 0.0
    unhistogrammed: int = 0
    window_s: float = 0.0
    buckets: defaultdict[float, float] = field(default_factory=lambda: defaultdict(float))

    def absorb(self, other: _Group) -> None:
        self.inferences += other.inferences
        self.errors += other.errors
        self.p95_weighted += other.p95_weighted
        self.agreement_weighted += other.agreement_weighted
        self.unhistogrammed += other.unhistogrammed
        self.window_s = max(self.window_s, other.window_s)
        for bound, n in other.buckets.items():
            self.buckets[bound] += n

    def windows(self) -> list[dict[str, Any]]:
        """The group as one telemetry window ``gates`` reads (weighted means undone)."""
        count = self.inferences
        if count <= 0:
            return []
        window: dict[str, Any] = {
            "count": count,
            "errors": self.errors,
            "window_s": self.window_s,
            "latency_ms": {"p95": self.p95_weighted / count},
            "agreement": self.agreement_weighted / count,
        }
        if self.buckets and not self.unhistogrammed:  # else: the weighted p95, as before
            bounds = sorted(self.buckets)
            window["histogram"] = {"bounds_ms": bounds, "counts": [self.buckets[b] for b in bounds]}
        return [window]


def _merged(
    groups: dict[tuple[int, str, str], _Group], keys: Iterable[tuple[int, str, str]]
) -> list[dict[str, Any]]:
    total = _Group()
    for key in keys:
        total.absorb(groups[key])
    return total.windows()


def read_wave_telemetry(
    *, session: Session, rollout: Rollout, wave: int, since: datetime
) -> WaveTelemetry:
    """The telemetry ``wave`` of ``rollout`` is judged on, from the aggregates since ``since``.

    Candidate: the wave's windows on the rollout's bundle. Baseline: every wave's windows
    on any other bundle. Shadow: the wave's shadow windows about the rollout's bundle.
    """
    assert rollout.id is not None
    start = _minute(since)
    # Summed in the database per (wave, bundle, kind): a handful of rows, however long
    # the wave has soaked.
    a = EventAggregate
    sums = session.execute(
        sa_select(
            col(a.wave),
            col(a.bundle_id),
            col(a.kind),
            func.sum(col(a.inferences)),
            func.sum(col(a.errors)),
            func.sum(col(a.p95_weighted)),
            func.sum(col(a.agreement_weighted)),
            func.sum(col(a.unhistogrammed)),
            func.max(col(a.window_s)),
        )
        .where(col(a.rollout_id) == rollout.id)
        .where(col(a.minute) >= start)
        .group_by(col(a.wave), col(a.bundle_id), col(a.kind))
    ).all()
    groups: dict[tuple[int, str, str], _Group] = {}
    for w, bundle, kind, inferences, errors, p95, agreement, unhistogrammed, window_s in sums:
        groups[(w, bundle, kind)] = _Group(
            inferences=float(inferences or 0),
            errors=float(errors or 0),
            p95_weighted=float(p95 or 0),
            agreement_weighted=float(agreement or 0),
            unhistogrammed=int(unhistogrammed or 0),
            window_s=float(window_s or 0),
        )
    b = EventHistogramBucket
    buckets = session.execute(
        sa_select(
            col(b.wave), col(b.bundle_id), col(b.kind), col(b.bound_ms), func.sum(col(b.inferences))
        )
        .where(col(b.rollout_id) == rollout.id)
        .where(col(b.minute) >= start)
        .group_by(col(b.wave), col(b.bundle_id), col(b.kind), col(b.bound_ms))
    ).all()
    for w, bundle, kind, bound, n in buckets:
        if (w, bundle, kind) in groups:
            groups[(w, bundle, kind)].buckets[float(bound)] += float(n or 0)
    ours = rollout.bundle_id
    candidate = [k for k in groups if k[2] == "inference" and k[0] == wave and k[1] == ours]
    baseline = [k for k in groups if k[2] == "inference" and k[1] != ours]
    shadow = [k for k in groups if k[2] == "shadow" and k[0] == wave and k[1] == ours]
    kinds = ["inference", "shadow"] if rollout.strategy == "shadow" else ["inference"]
    reporters = session.exec(
        select(RolloutReporter.device_id)
        .where(RolloutReporter.rollout_id == rollout.id)
        .where(RolloutReporter.bundle_id == ours)
        .where(col(RolloutReporter.kind).in_(kinds))
        .where(col(RolloutReporter.last_ts) >= since)
    ).all()
    return WaveTelemetry(
        candidate=_merged(groups, candidate),
        baseline=_merged(groups, baseline),
        shadow=_merged(groups, shadow),
        reporters=set(reporters),
    )
