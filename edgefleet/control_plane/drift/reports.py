"""Drift as the fleet reports it: time series per device and cohort, and the fleet verdict.

Devices publish one ``drift`` telemetry event per full window (see
``edgefleet.drift``). The cohort of a window is the firmware profile of the bundle
that scored it; the model version comes from the same bundle, so a window is
always judged against the reference of the model that produced it.

A window reports its inputs (``drifted``, ``share_drifted``, ``psi``, and since
calibrated references ``reasons`` and ``new_categories``) and, when the bundle's
reference holds the model's outputs, the outputs apart (``output``), and the accuracy
of the ground-truth labels the device joined to its answers during the window
(``accuracy``: ``labelled`` answers, ``value`` = correct / labelled, None without
labels), so drift reads beside accuracy. Windows from agents that predate a field
decode with it empty; the fleet rule judges inputs only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import Bundle, Event
from edgefleet.control_plane.drift.rule import CohortVerdict, DriftRule, evaluate_cohort

RECENT_WINDOWS = 20
"""Windows per device the verdict replays; older ones cannot change its hysteresis state."""


@dataclass(frozen=True)
class DriftPoint:
    ts: datetime
    device_id: str
    cohort: str
    model: str
    model_version: str
    bundle_id: str
    share_drifted: float
    drifted: bool
    psi: list[float]
    reasons: list[str] = field(default_factory=list)
    new_categories: list[dict[str, Any]] = field(default_factory=list)
    output_drifted: bool | None = None
    output_psi: float | None = None
    labelled: int = 0
    accuracy: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "ts": self.ts.isoformat(),
            "device_id": self.device_id,
            "cohort": self.cohort,
            "model": self.model,
            "model_version": self.model_version,
            "bundle_id": self.bundle_id,
            "share_drifted": self.share_drifted,
            "drifted": self.drifted,
            "psi": self.psi,
            "reasons": self.reasons,
            "new_categories": self.new_categories,
            "output_drifted": self.output_drifted,
            "output_psi": self.output_psi,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
        }


def drift_series(
    *,
    session: Session,
    model: str | None = None,
    model_version: str | None = None,
    since: datetime | None = None,
    limit: int = 20_000,
) -> list[DriftPoint]:
    """Drift windows oldest first, joined with the bundle that scored them."""
    query = (
        select(Event, Bundle)
        .join(Bundle, col(Bundle.id) == col(Event.bundle_id))
        .where(Event.kind == "drift")
    )
    if model is not None:
        query = query.where(Bundle.model == model)
    if model_version is not None:
        query = query.where(Bundle.model_version == model_version)
    if since is not None:
        query = query.where(col(Event.ts) >= since)
    rows = session.exec(query.order_by(col(Event.ts).desc()).limit(limit)).all()
    points = []
    for event, bundle in reversed(rows):
        data = event.data or {}
        output = data.get("output")
        output = output if isinstance(output, dict) else {}
        labelled, accuracy = _accuracy(data.get("accuracy"))
        points.append(
            DriftPoint(
                ts=event.ts,
                device_id=event.device_id,
                cohort=bundle.profile,
                model=bundle.model,
                model_version=bundle.model_version,
                bundle_id=bundle.id,
                share_drifted=float(data.get("share_drifted", 0.0)),
                drifted=bool(data.get("drifted", False)),
                psi=[float(v) for v in data.get("psi", [])],
                reasons=[str(r) for r in data.get("reasons") or []],
                new_categories=[c for c in data.get("new_categories") or [] if isinstance(c, dict)],
                output_drifted=bool(output["drifted"]) if "drifted" in output else None,
                output_psi=float(output["psi"]) if "psi" in output else None,
                labelled=labelled,
                accuracy=accuracy,
            )
        )
    return points


def _accuracy(data: Any) -> tuple[int, float | None]:
    """(labelled answers, accuracy) of a window's ``accuracy``; (0, None) when absent
    or not the shape an agent sends."""
    if not isinstance(data, dict):
        return 0, None
    labelled, value = data.get("labelled"), data.get("value")
    if isinstance(labelled, bool) or not isinstance(labelled, int) or labelled <= 0:
        return 0, None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return labelled, None
    return labelled, float(value)


def fleet_verdicts(
    *, session: Session, rule: DriftRule, model: str | None = None
) -> list[CohortVerdict]:
    """The drift rule applied to every (model, version, cohort) that reported windows."""
    groups: dict[tuple[str, str, str], dict[str, list[bool]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for point in drift_series(session=session, model=model):
        groups[(point.model, point.model_version, point.cohort)][point.device_id].append(
            point.drifted
        )
    verdicts = []
    for (model_name, version, cohort), by_device in sorted(groups.items()):
        recent = {device: windows[-RECENT_WINDOWS:] for device, windows in by_device.items()}
        verdicts.append(
            evaluate_cohort(
                cohort=cohort,
                model=model_name,
                model_version=version,
                windows_by_device=recent,
                rule=rule,
            )
        )
    return verdicts


def verdict_public(verdict: CohortVerdict) -> dict[str, Any]:
    return {
        "cohort": verdict.cohort,
        "model": verdict.model,
        "model_version": verdict.model_version,
        "devices_reporting": verdict.devices_reporting,
        "devices_drifted": verdict.devices_drifted,
        "share": round(verdict.share, 4),
        "fires": verdict.fires,
    }


def summarise(points: Sequence[DriftPoint]) -> dict[str, Any]:
    """Per cohort: windows seen and the share of them that drifted."""
    by_cohort: dict[str, list[DriftPoint]] = defaultdict(list)
    for point in points:
        by_cohort[point.cohort].append(point)
    return {
        cohort: {
            "windows": len(items),
            "drifted_windows": sum(p.drifted for p in items),
            "output_drifted_windows": sum(bool(p.output_drifted) for p in items),
        }
        for cohort, items in by_cohort.items()
    }
