"""Drift reported by the fleet: per-window series and the fleet-level verdict."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from edgefleet.control_plane.api.deps import SessionDep
from edgefleet.control_plane.drift.reports import drift_series, fleet_verdicts, verdict_public
from edgefleet.control_plane.drift.rule import DriftRule

router = APIRouter(prefix="/drift", tags=["drift"])


@router.get("/series")
def read_drift_series(
    session: SessionDep,
    model: str | None = None,
    version: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 20_000,
) -> list[dict[str, Any]]:
    """Drift windows oldest first: device, cohort (profile), share drifted, per-feature PSI."""
    points = drift_series(
        session=session, model=model, model_version=version, since=since, limit=limit
    )
    return [p.public() for p in points]


@router.get("/status")
def read_drift_status(
    session: SessionDep,
    model: str | None = None,
    enter: Annotated[int, Query(ge=1, le=100)] = DriftRule.enter,
    leave: Annotated[int, Query(ge=1, le=100)] = DriftRule.leave,
    min_devices: Annotated[int, Query(ge=1)] = DriftRule.min_devices,
    device_share: Annotated[float, Query(gt=0, le=1)] = DriftRule.device_share,
) -> list[dict[str, Any]]:
    """The fleet drift rule per model version and cohort, with who drifted."""
    rule = DriftRule(enter=enter, leave=leave, min_devices=min_devices, device_share=device_share)
    return [verdict_public(v) for v in fleet_verdicts(session=session, rule=rule, model=model)]
